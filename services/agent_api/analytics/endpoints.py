"""Analytics for supervisors and admins: volume, timings, SLA, handoffs, CSAT, sentiment
and the staffing forecast, over a time window (``from`` inclusive, ``to`` exclusive)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, Query

from services.agent_api.analytics import service
from services.agent_api.analytics.schemas import (
    CsatReport,
    ForecastReport,
    HandoffReport,
    SentimentReport,
    SlaReport,
    TimingReport,
    VolumeReport,
    Window,
)
from services.agent_api.deps import CurrentAgent, SessionDep, require_supervisor
from services.agent_api.rest import problems
from shared.db.models import utcnow
from shared.events import Channel
from shared.problems import ProblemError

router = APIRouter(prefix="/v1/analytics", tags=["analytics"])

MAX_WINDOW = timedelta(days=92)
DEFAULT_WINDOW = timedelta(days=7)
FORECAST_WINDOW = timedelta(days=28)
# Far enough inside Python's years 1-9999 that a default start, a time zone's offset and
# the forecast's hour steps never leave them.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
RANGE = f"between {EARLIEST:%Y-%m-%dT%H:%M:%SZ} and {LATEST:%Y-%m-%dT%H:%M:%SZ}"
ANSWERS = problems(401, 403, 422)


def _window(start: datetime | None, end: datetime | None, default: timedelta) -> Window:
    end = _within_range(_utc(end)) if end is not None else utcnow()
    start = _within_range(_utc(start) if start is not None else end - default)
    if end <= start:
        raise ProblemError(422, "`to` must be after `from`.")
    if end - start > MAX_WINDOW:
        raise ProblemError(422, f"The window may span at most {MAX_WINDOW.days} days.")
    return Window(start=start, end=end)


def _utc(moment: datetime) -> datetime:
    """A time without an offset is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _within_range(moment: datetime) -> datetime:
    if not EARLIEST <= moment <= LATEST:
        raise ProblemError(422, f"The window must lie {RANGE}.")
    return moment


FromParam = Annotated[
    datetime | None,
    Query(
        alias="from",
        description=f"Window start (ISO 8601; no offset means UTC), {RANGE}.",
    ),
]
ToParam = Annotated[
    datetime | None,
    Query(alias="to", description=f"Window end, exclusive (default: now), {RANGE}."),
]


def window(start: FromParam = None, end: ToParam = None) -> Window:
    """The window; 7 days up to now by default, at most 92 days."""
    return _window(start, end, DEFAULT_WINDOW)


WindowDep = Annotated[Window, Depends(window)]


def zone_of(
    timezone: Annotated[
        str, Query(max_length=64, description="IANA zone for hours of the week.")
    ] = "UTC",
) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ProblemError(422, f"Unknown time zone {timezone!r}.") from exc


ZoneDep = Annotated[ZoneInfo, Depends(zone_of)]


@router.get("/volume", response_model=VolumeReport, responses=ANSWERS)
async def volume(
    session: SessionDep, claims: CurrentAgent, win: WindowDep, zone: ZoneDep
) -> VolumeReport:
    """New conversations in the window by hour of the week and channel."""
    require_supervisor(claims)
    return await service.volume(session, claims.workspace_id, win, zone)


@router.get("/response-times", response_model=TimingReport, responses=ANSWERS)
async def response_times(session: SessionDep, claims: CurrentAgent, win: WindowDep) -> TimingReport:
    """First-response, resolution and wait times (mean, p50, p90, p99) of the
    conversations created in the window, overall and per channel."""
    require_supervisor(claims)
    return await service.timings(session, claims.workspace_id, win)


@router.get("/sla", response_model=SlaReport, responses=ANSWERS)
async def sla(session: SessionDep, claims: CurrentAgent, win: WindowDep) -> SlaReport:
    """First-response SLA compliance per tier: answered by the due time (met), answered
    late or not answered by it (breached), or still within it (pending)."""
    require_supervisor(claims)
    return await service.sla(session, claims.workspace_id, win)


@router.get("/handoffs", response_model=HandoffReport, responses=ANSWERS)
async def handoffs(session: SessionDep, claims: CurrentAgent, win: WindowDep) -> HandoffReport:
    """Transfers and touchpoints (distinct owning agents) per conversation."""
    require_supervisor(claims)
    return await service.handoffs(session, claims.workspace_id, win)


@router.get("/csat", response_model=CsatReport, responses=ANSWERS)
async def csat(session: SessionDep, claims: CurrentAgent, win: WindowDep) -> CsatReport:
    """Customer satisfaction scores given in the window: count, average, distribution
    1-5, and the same by agent, team, channel and tier (as at resolve)."""
    require_supervisor(claims)
    return await service.csat(session, claims.workspace_id, win)


@router.get("/sentiment", response_model=SentimentReport, responses=ANSWERS)
async def sentiment(session: SessionDep, claims: CurrentAgent, win: WindowDep) -> SentimentReport:
    """Customers' sentiment (VADER compound, per UTC day) and top keywords per channel."""
    require_supervisor(claims)
    return await service.sentiment(session, claims.workspace_id, win)


@router.get("/forecast", response_model=ForecastReport, responses=ANSWERS)
async def forecast(
    session: SessionDep,
    claims: CurrentAgent,
    zone: ZoneDep,
    start: FromParam = None,
    end: ToParam = None,
    channel: Annotated[Channel, Query(description="Channel to staff.")] = Channel.WEBCHAT,
    target_share: Annotated[
        float, Query(gt=0, lt=1, description="Share to answer within the target time.")
    ] = 0.8,
    target_seconds: Annotated[
        float, Query(ge=0, le=86_400, description="Target time to answer.")
    ] = 120,
    concurrency: Annotated[
        int, Query(ge=1, le=20, description="Conversations an agent handles at once.")
    ] = 1,
    handle_seconds: Annotated[
        float | None,
        Query(gt=0, le=86_400, description="Override the observed average handle time."),
    ] = None,
) -> ForecastReport:
    """Agents needed per hour of the week so that ``target_share`` of customers is
    answered within ``target_seconds`` (Erlang C), from the arrivals per hour observed
    in the window (default: the last 28 days) and the average handle time of its
    finished assignments. The inputs used are part of the answer."""
    require_supervisor(claims)
    win = _window(start, end, FORECAST_WINDOW)
    return await service.forecast(
        session,
        claims.workspace_id,
        win,
        zone,
        channel=channel.value,
        target_share=target_share,
        target_seconds=target_seconds,
        concurrency=concurrency,
        handle_seconds=handle_seconds,
    )
