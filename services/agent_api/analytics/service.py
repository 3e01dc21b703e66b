"""Analytics over a time window. Every query is an index range on the window (the
``(workspace_id, created_at)``-style indexes of migration 0007), never a table scan;
the window is bounded, so the rows read are bounded too."""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from services.agent_api.analytics.erlang import agents_needed
from services.agent_api.analytics.figures import (
    HOURS_PER_WEEK,
    aware,
    hour_of_week,
    percentile,
    slot_occurrences,
    top_keywords,
)
from services.agent_api.analytics.schemas import (
    ChannelSentiment,
    CsatGroup,
    CsatReport,
    DaySentiment,
    DurationSummary,
    ForecastHour,
    ForecastInputs,
    ForecastReport,
    HandoffReport,
    HourOfWeekVolume,
    KeywordCount,
    SentimentReport,
    SlaReport,
    SlaTierFigures,
    TimingFigures,
    TimingReport,
    VolumeReport,
    Window,
)
from shared.db.models import (
    Agent,
    Assignment,
    Conversation,
    CsatSurvey,
    Message,
    Team,
    utcnow,
)
from shared.events import MessageDirection
from shared.routing.engine import load_policy
from shared.routing.intake import vader_compound

SENTIMENT_SAMPLE = 20_000
TOP_KEYWORDS = 10


def _in_window(window: Window) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return (
        Conversation.created_at >= window.start,
        Conversation.created_at < window.end,
    )


async def volume(
    session: AsyncSession, workspace_id: uuid.UUID, window: Window, zone: ZoneInfo
) -> VolumeReport:
    rows = await session.execute(
        select(Conversation.created_at, Conversation.channel).where(
            Conversation.workspace_id == workspace_id, *_in_window(window)
        )
    )
    cells: list[dict[str, int]] = [defaultdict(int) for _ in range(HOURS_PER_WEEK)]
    by_channel: dict[str, int] = defaultdict(int)
    for created_at, channel in rows:
        cells[hour_of_week(created_at, zone)][channel] += 1
        by_channel[channel] += 1
    return VolumeReport(
        window=window,
        timezone=zone.key,
        total=sum(by_channel.values()),
        by_channel=dict(sorted(by_channel.items())),
        hours=[
            HourOfWeekVolume(
                hour_of_week=slot,
                weekday=slot // 24,
                hour=slot % 24,
                total=sum(cell.values()),
                by_channel=dict(sorted(cell.items())),
            )
            for slot, cell in enumerate(cells)
        ],
    )


def summarize(durations: Iterable[float]) -> DurationSummary:
    ordered = sorted(durations)
    if not ordered:
        return DurationSummary(
            count=0, mean_seconds=None, p50_seconds=None, p90_seconds=None, p99_seconds=None
        )
    return DurationSummary(
        count=len(ordered),
        mean_seconds=sum(ordered) / len(ordered),
        p50_seconds=percentile(ordered, 0.50),
        p90_seconds=percentile(ordered, 0.90),
        p99_seconds=percentile(ordered, 0.99),
    )


def _seconds(later: datetime | None, earlier: datetime) -> float | None:
    if later is None:
        return None
    return max(0.0, (aware(later) - aware(earlier)).total_seconds())


async def timings(session: AsyncSession, workspace_id: uuid.UUID, window: Window) -> TimingReport:
    in_window = (
        select(Conversation.id)
        .where(Conversation.workspace_id == workspace_id, *_in_window(window))
        .scalar_subquery()
    )
    first_assigned = dict(
        (
            await session.execute(
                select(Assignment.conversation_id, func.min(Assignment.created_at))
                .where(
                    Assignment.workspace_id == workspace_id,
                    Assignment.conversation_id.in_(in_window),
                )
                .group_by(Assignment.conversation_id)
            )
        ).all()
    )
    rows = await session.execute(
        select(
            Conversation.id,
            Conversation.channel,
            Conversation.created_at,
            Conversation.first_response_at,
            Conversation.resolved_at,
        ).where(Conversation.workspace_id == workspace_id, *_in_window(window))
    )
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for conversation_id, channel, created, responded, resolved in rows:
        for kind, value in (
            ("first_response", _seconds(responded, created)),
            ("resolution", _seconds(resolved, created)),
            ("wait", _seconds(first_assigned.get(conversation_id), created)),
        ):
            if value is not None:
                samples[channel][kind].append(value)
                samples["*"][kind].append(value)

    def figures(of: dict[str, list[float]]) -> TimingFigures:
        return TimingFigures(
            first_response=summarize(of["first_response"]),
            resolution=summarize(of["resolution"]),
            wait=summarize(of["wait"]),
        )

    overall = figures(samples["*"])
    return TimingReport(
        window=window,
        first_response=overall.first_response,
        resolution=overall.resolution,
        wait=overall.wait,
        by_channel={ch: figures(of) for ch, of in sorted(samples.items()) if ch != "*"},
    )


def _compliance(met: int, breached: int) -> float | None:
    return met / (met + breached) if met + breached else None


async def sla(session: AsyncSession, workspace_id: uuid.UUID, window: Window) -> SlaReport:
    rows = await session.execute(
        select(Conversation.tier, Conversation.sla_due_at, Conversation.first_response_at).where(
            Conversation.workspace_id == workspace_id,
            *_in_window(window),
            Conversation.sla_due_at.is_not(None),
        )
    )
    now = utcnow()
    counts: dict[int, list[int]] = {tier: [0, 0, 0] for tier in (1, 2, 3)}
    for tier, due_at, responded in rows:
        if due_at is None:
            continue
        due = aware(due_at)
        if responded is not None:
            counts[tier][0 if aware(responded) <= due else 1] += 1
        elif due <= now:
            counts[tier][1] += 1
        else:
            counts[tier][2] += 1
    met = sum(c[0] for c in counts.values())
    breached = sum(c[1] for c in counts.values())
    return SlaReport(
        window=window,
        tiers=[
            SlaTierFigures(tier=tier, met=m, breached=b, pending=p, compliance=_compliance(m, b))
            for tier, (m, b, p) in sorted(counts.items())
        ],
        met=met,
        breached=breached,
        compliance=_compliance(met, breached),
    )


async def handoffs(session: AsyncSession, workspace_id: uuid.UUID, window: Window) -> HandoffReport:
    conversations = list(
        await session.scalars(
            select(Conversation.id).where(
                Conversation.workspace_id == workspace_id, *_in_window(window)
            )
        )
    )
    in_window = (
        select(Conversation.id)
        .where(Conversation.workspace_id == workspace_id, *_in_window(window))
        .scalar_subquery()
    )
    owners: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for conversation_id, agent_id in await session.execute(
        select(Assignment.conversation_id, Assignment.agent_id).where(
            Assignment.workspace_id == workspace_id, Assignment.conversation_id.in_(in_window)
        )
    ):
        owners[conversation_id].append(agent_id)
    transfers = [max(0, len(owners.get(c, ())) - 1) for c in conversations]
    touchpoints = [len(set(owners.get(c, ()))) for c in conversations]

    def distribution(values: list[int]) -> dict[str, int]:
        found: dict[int, int] = defaultdict(int)
        for value in values:
            found[value] += 1
        return {str(k): found[k] for k in sorted(found)}

    count = len(conversations)
    return HandoffReport(
        window=window,
        conversations=count,
        transfers_total=sum(transfers),
        transfers_per_conversation=sum(transfers) / count if count else None,
        touchpoints_per_conversation=sum(touchpoints) / count if count else None,
        transfers_distribution=distribution(transfers),
        touchpoints_distribution=distribution(touchpoints),
    )


@dataclass
class _Sent:
    """Surveys sent in the window: sent, answered, still open."""

    sent: int = 0
    answered: int = 0
    open: int = 0

    def add(self, answered: bool, still_open: bool) -> None:
        self.sent += 1
        self.answered += answered
        self.open += still_open


def _csat_group(key: str, name: str | None, scores: list[int], sent: _Sent) -> CsatGroup:
    return CsatGroup(
        key=key,
        name=name,
        count=len(scores),
        average=sum(scores) / len(scores) if scores else None,
        distribution={str(s): scores.count(s) for s in range(1, 6)},
        surveys_sent=sent.sent,
        surveys_answered=sent.answered,
        surveys_open=sent.open,
        response_rate=sent.answered / sent.sent if sent.sent else None,
    )


def _group_keys(
    agent_id: uuid.UUID | None, team_id: uuid.UUID | None, channel: str, tier: int
) -> dict[str, str]:
    keys = {"channel": channel, "tier": str(tier)}
    if agent_id is not None:
        keys["agent"] = str(agent_id)
    if team_id is not None:
        keys["team"] = str(team_id)
    return keys


async def csat(session: AsyncSession, workspace_id: uuid.UUID, window: Window) -> CsatReport:
    attribution = (CsatSurvey.agent_id, CsatSurvey.team_id, CsatSurvey.channel, CsatSurvey.tier)
    scored = (
        await session.execute(
            select(CsatSurvey.score, *attribution).where(
                CsatSurvey.workspace_id == workspace_id,
                CsatSurvey.responded_at >= window.start,
                CsatSurvey.responded_at < window.end,
                CsatSurvey.score.is_not(None),
            )
        )
    ).all()
    sent_rows = (
        await session.execute(
            select(CsatSurvey.responded_at, CsatSurvey.expires_at, *attribution).where(
                CsatSurvey.workspace_id == workspace_id,
                CsatSurvey.sent_at >= window.start,
                CsatSurvey.sent_at < window.end,
            )
        )
    ).all()
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    sent: dict[str, dict[str, _Sent]] = defaultdict(lambda: defaultdict(_Sent))
    scores: list[int] = []
    for score, agent_id, team_id, channel, tier in scored:
        if score is None:
            continue
        scores.append(score)
        for kind, key in _group_keys(agent_id, team_id, channel, tier).items():
            groups[kind][key].append(score)
    now = utcnow()
    overall_sent = _Sent()
    for responded_at, expires_at, agent_id, team_id, channel, tier in sent_rows:
        answered = responded_at is not None
        still_open = not answered and aware(expires_at) > now
        overall_sent.add(answered, still_open)
        for kind, key in _group_keys(agent_id, team_id, channel, tier).items():
            sent[kind][key].add(answered, still_open)
            groups[kind].setdefault(key, [])
    agent_names = await _names(
        session,
        select(Agent.id, Agent.display_name).where(Agent.workspace_id == workspace_id),
        Agent.id,
        groups["agent"].keys(),
    )
    team_names = await _names(
        session,
        select(Team.id, Team.name).where(Team.workspace_id == workspace_id),
        Team.id,
        groups["team"].keys(),
    )

    def breakdown(kind: str, names: dict[str, str]) -> list[CsatGroup]:
        return [
            _csat_group(k, names.get(k), v, sent[kind][k]) for k, v in sorted(groups[kind].items())
        ]

    overall = _csat_group("*", None, scores, overall_sent)
    return CsatReport(
        count=overall.count,
        average=overall.average,
        distribution=overall.distribution,
        window=window,
        by_agent=breakdown("agent", agent_names),
        by_team=breakdown("team", team_names),
        by_channel=breakdown("channel", {}),
        by_tier=breakdown("tier", {}),
        surveys_sent=overall.surveys_sent,
        surveys_answered=overall.surveys_answered,
        surveys_open=overall.surveys_open,
        response_rate=overall.response_rate,
    )


async def _names(
    session: AsyncSession,
    columns: Select[uuid.UUID, str],
    id_column: InstrumentedAttribute[uuid.UUID],
    ids: Iterable[str],
) -> dict[str, str]:
    wanted = [uuid.UUID(i) for i in ids]
    if not wanted:
        return {}
    rows = await session.execute(columns.where(id_column.in_(wanted)))
    return {str(row_id): name for row_id, name in rows}


async def sentiment(
    session: AsyncSession, workspace_id: uuid.UUID, window: Window
) -> SentimentReport:
    rows = (
        await session.execute(
            select(Message.channel, Message.created_at, Message.text)
            .where(
                Message.workspace_id == workspace_id,
                Message.created_at >= window.start,
                Message.created_at < window.end,
                Message.direction == MessageDirection.INBOUND.value,
            )
            .order_by(Message.created_at.desc())
            .limit(SENTIMENT_SAMPLE + 1)
        )
    ).all()
    sampled = len(rows) > SENTIMENT_SAMPLE
    per_channel: dict[str, list[tuple[str, float, str]]] = defaultdict(list)
    for channel, created_at, text in rows[:SENTIMENT_SAMPLE]:
        day = aware(created_at).date().isoformat()
        per_channel[channel].append((day, vader_compound(text), text))
    channels = []
    for channel, items in sorted(per_channel.items()):
        days: dict[str, list[float]] = defaultdict(list)
        for day, score, _ in items:
            days[day].append(score)
        channels.append(
            ChannelSentiment(
                channel=channel,
                messages=len(items),
                average_sentiment=sum(s for _, s, _ in items) / len(items),
                days=[
                    DaySentiment(date=d, messages=len(s), average_sentiment=sum(s) / len(s))
                    for d, s in sorted(days.items())
                ],
                top_keywords=[
                    KeywordCount(keyword=word, messages=n)
                    for word, n in top_keywords((t for _, _, t in items), TOP_KEYWORDS)
                ],
            )
        )
    return SentimentReport(window=window, sampled=sampled, channels=channels)


async def forecast(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    window: Window,
    zone: ZoneInfo,
    *,
    channel: str,
    target_share: float,
    target_seconds: float,
    concurrency: int,
    handle_seconds: float | None,
) -> ForecastReport:
    rows = await session.scalars(
        select(Conversation.created_at).where(
            Conversation.workspace_id == workspace_id,
            *_in_window(window),
            Conversation.channel == channel,
        )
    )
    counts = [0] * HOURS_PER_WEEK
    for created_at in rows:
        counts[hour_of_week(created_at, zone)] += 1
    hours_observed = slot_occurrences(window.start, window.end, zone)

    in_window = (
        select(Conversation.id)
        .where(
            Conversation.workspace_id == workspace_id,
            *_in_window(window),
            Conversation.channel == channel,
        )
        .scalar_subquery()
    )
    durations = [
        (aware(closed) - aware(created)).total_seconds()
        for created, closed in await session.execute(
            select(Assignment.created_at, Assignment.closed_at).where(
                Assignment.workspace_id == workspace_id,
                Assignment.conversation_id.in_(in_window),
                Assignment.closed_at.is_not(None),
            )
        )
        if closed is not None
    ]
    if handle_seconds is not None:
        handle, source = handle_seconds, "request"
    elif durations and sum(durations) > 0:
        handle, source = sum(durations) / len(durations), "observed"
    else:
        _, policy = await load_policy(session, workspace_id)
        handle, source = policy.default_handle_seconds, "policy_default"

    hours = []
    for slot in range(HOURS_PER_WEEK):
        rate = counts[slot] / hours_observed[slot] if hours_observed[slot] else 0.0
        staffing = agents_needed(
            rate, handle, target_share=target_share, target_seconds=target_seconds
        )
        hours.append(
            ForecastHour(
                hour_of_week=slot,
                weekday=slot // 24,
                hour=slot % 24,
                observed_conversations=counts[slot],
                arrivals_per_hour=rate,
                traffic_erlangs=staffing.traffic_erlangs,
                agents=math.ceil(staffing.agents / concurrency),
                service_level=staffing.service_level,
                average_speed_of_answer_seconds=staffing.average_speed_of_answer_seconds,
            )
        )
    return ForecastReport(
        inputs=ForecastInputs(
            channel=channel,
            window=window,
            timezone=zone.key,
            target_share=target_share,
            target_seconds=target_seconds,
            handle_seconds=handle,
            handle_seconds_source=source,
            handled_samples=len(durations),
            concurrency=concurrency,
        ),
        hours=hours,
        peak_agents=max(h.agents for h in hours),
    )
