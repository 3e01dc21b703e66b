"""CSAT in agent_api: the survey on resolve, settings, follow-ups, link answers."""

from __future__ import annotations

import uuid
from datetime import UTC

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.auth import AgentClaims
from services.agent_api.csat.schemas import FollowUpStatus
from services.agent_api.rest import keyset, split_page
from shared.csat import (
    CsatSettings,
    SurveyClosedError,
    SurveyOutcome,
    link_key,
    record_score,
    send_survey,
    survey_of_token,
)
from shared.db.models import (
    Conversation,
    CsatFollowUp,
    CsatSettingsRow,
    CsatSurvey,
    utcnow,
)
from shared.events import CsatFollowUpClosed, Topic, conversation_key
from shared.outbox import record_event
from shared.problems import ProblemError
from shared.settings import Settings

EVENT_SOURCE = "omniroute/agent-api"


def _link_key(settings: Settings) -> bytes:
    return link_key(settings.jwt_secret.get_secret_value())


async def survey_on_resolve(
    session: AsyncSession, conversation: Conversation, settings: Settings
) -> SurveyOutcome:
    return await send_survey(
        session,
        conversation,
        link_key_bytes=_link_key(settings),
        default_link_base_url=settings.agent_api_public_url,
        source=EVENT_SOURCE,
    )


async def save_settings(
    session: AsyncSession, workspace_id: uuid.UUID, document: CsatSettings
) -> CsatSettings:
    row = await session.get(CsatSettingsRow, workspace_id)
    if row is None:
        row = CsatSettingsRow(workspace_id=workspace_id, document={})
        session.add(row)
    row.document = document.model_dump(mode="json")
    row.updated_at = utcnow()
    await session.flush()
    return document


async def list_follow_ups(
    session: AsyncSession,
    claims: AgentClaims,
    *,
    status: FollowUpStatus,
    cursor: str | None,
    limit: int,
) -> tuple[list[CsatFollowUp], str | None]:
    query = select(CsatFollowUp).where(CsatFollowUp.workspace_id == claims.workspace_id)
    if status is FollowUpStatus.OPEN:
        query = query.where(CsatFollowUp.closed_at.is_(None))
    elif status is FollowUpStatus.CLOSED:
        query = query.where(CsatFollowUp.closed_at.is_not(None))
    query = keyset(
        query,
        CsatFollowUp.opened_at,
        CsatFollowUp.id,
        cursor=cursor,
        limit=limit,
        newest_first=True,
    )
    rows = list(await session.scalars(query))
    return split_page(rows, limit, lambda f: (f.opened_at, f.id))


async def close_follow_up(
    session: AsyncSession, claims: AgentClaims, follow_up_id: uuid.UUID, note: str
) -> CsatFollowUp:
    follow_up = await session.scalar(
        select(CsatFollowUp)
        .where(CsatFollowUp.id == follow_up_id, CsatFollowUp.workspace_id == claims.workspace_id)
        .with_for_update()
    )
    if follow_up is None:
        raise ProblemError(404, f"No follow-up {follow_up_id}.")
    if follow_up.closed_at is not None:
        raise ProblemError(409, "The follow-up is closed already.")
    now = utcnow()
    follow_up.closed_at = now
    follow_up.closed_by_agent_id = claims.agent_id
    follow_up.note = note
    record_event(
        session,
        CsatFollowUpClosed(
            workspace_id=follow_up.workspace_id,
            follow_up_id=follow_up.id,
            conversation_id=follow_up.conversation_id,
            closed_by_agent_id=claims.agent_id,
            note=note,
            closed_at=now,
        ),
        topic=Topic.EVENTS,
        key=conversation_key(follow_up.workspace_id, follow_up.conversation_id),
        source=EVENT_SOURCE,
        subject=str(follow_up.conversation_id),
    )
    await session.flush()
    return follow_up


async def survey_by_token(session: AsyncSession, settings: Settings, token: str) -> CsatSurvey:
    """The survey of a signed link; 404 for a token we did not sign."""
    survey_id = survey_of_token(_link_key(settings), token)
    survey = await session.get(CsatSurvey, survey_id) if survey_id is not None else None
    if survey is None:
        raise ProblemError(404, "This survey link is not valid.")
    return survey


def survey_state(survey: CsatSurvey) -> str | None:
    """Why the survey cannot be answered (``answered``/``expired``), or None."""
    if survey.responded_at is not None:
        return "answered"
    expires = survey.expires_at
    if expires.tzinfo is None:  # SQLite hands back naive UTC
        expires = expires.replace(tzinfo=UTC)
    if expires <= utcnow():
        return "expired"
    return None


async def answer_by_link(
    session: AsyncSession, settings: Settings, token: str, score: int
) -> CsatSurvey:
    survey = await survey_by_token(session, settings, token)
    state = survey_state(survey)
    if state == "answered":
        raise ProblemError(409, "This survey was answered already. Thank you!")
    if state == "expired":
        raise ProblemError(410, "This survey has expired.")
    try:
        await record_score(session, survey, score, via="link", source=EVENT_SOURCE)
    except SurveyClosedError as exc:  # answered at the same moment elsewhere
        raise ProblemError(409, "This survey was answered already. Thank you!") from exc
    return survey
