"""Proactive notices (admins and integrations): one text to a set of contacts, each on
their preferred channel, with per-recipient delivery status."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.deps import CurrentAgent, SessionDep, StateDep
from services.agent_api.notices import service
from services.agent_api.notices.schemas import NoticeCreate, NoticeOut, NoticePage, NoticeSummary
from services.agent_api.rest import problems
from shared.outbox import commit_and_publish

router = APIRouter(prefix="/v1/notices", tags=["notices"])


async def _out(session: AsyncSession, workspace_id: uuid.UUID, notice_id: uuid.UUID) -> NoticeOut:
    notice, recipients = await service.get_notice(session, workspace_id, notice_id)
    return NoticeOut(
        id=notice.id,
        subject=notice.subject,
        text=notice.text,
        channel=notice.channel,
        created_at=notice.created_at,
        counts=service.counts(recipients),
        recipients=recipients,
    )


@router.post(
    "",
    status_code=202,
    response_model=NoticeOut,
    responses=problems(
        401, 403, 404, 422, s404="A contact id is not in this workspace; nothing was sent."
    ),
)
async def create_notice(
    body: NoticeCreate,
    session: SessionDep,
    state: StateDep,
    claims: CurrentAgent,
    response: Response,
) -> NoticeOut:
    """Send a notice to contacts (admins and API keys). Each contact gets it on the
    channel they wrote on most recently (or on `channel`), as a system message in that
    conversation, through the ordinary outbound path. A contact who opted out of SMS,
    whose WhatsApp 24-hour window is closed, or who has no address is `skipped` with the
    reason; the others are `queued`, then `sent`, `delivered` or `failed` as the
    provider's receipts arrive (`GET /v1/notices/{id}`). Use `Idempotency-Key` to retry
    safely."""
    service.require_notice_sender(claims)
    notice, _ = await service.create_notice(session, claims, body)
    await commit_and_publish(session, state.bus, state.database.sessions)
    response.headers["Location"] = f"/v1/notices/{notice.id}"
    # A fresh session: the request's one holds the published outbox rows (their stream
    # positions set after commit), which a read would flush back in an open write.
    async with state.database.sessions() as reading:
        return await _out(reading, claims.workspace_id, notice.id)


@router.get("", response_model=NoticePage, responses=problems(400, 401, 403, 422))
async def list_notices(
    session: SessionDep,
    claims: CurrentAgent,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> NoticePage:
    """The workspace's notices, newest first (admins and API keys)."""
    service.require_notice_sender(claims)
    rows, next_cursor = await service.list_notices(
        session, claims.workspace_id, limit=limit, cursor=cursor
    )
    return NoticePage(
        items=[
            NoticeSummary(
                id=n.id, subject=n.subject, text=n.text, channel=n.channel, created_at=n.created_at
            )
            for n in rows
        ],
        next_cursor=next_cursor,
    )


@router.get("/{notice_id}", response_model=NoticeOut, responses=problems(401, 403, 404, 422))
async def get_notice(notice_id: uuid.UUID, session: SessionDep, claims: CurrentAgent) -> NoticeOut:
    """A notice with each recipient's status: queued, sent, delivered, failed (with the
    provider's reason) or skipped (with why)."""
    service.require_notice_sender(claims)
    return await _out(session, claims.workspace_id, notice_id)
