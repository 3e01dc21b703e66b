"""Canned responses and outcome codes of a workspace."""

from __future__ import annotations

import uuid

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.canned.schemas import (
    CannedResponseCreate,
    CannedResponseUpdate,
    OutcomeCodeCreate,
)
from services.agent_api.rest import LIKE_ESCAPE, contains_pattern, keyset, split_page
from shared.db.models import CannedResponse, OutcomeCode, utcnow
from shared.problems import ProblemError


async def list_canned(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    *,
    q: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[CannedResponse], str | None]:
    query = select(CannedResponse).where(CannedResponse.workspace_id == workspace_id)
    if q:
        pattern = contains_pattern(q)
        query = query.where(
            or_(
                CannedResponse.shortcut.ilike(pattern, escape=LIKE_ESCAPE),
                CannedResponse.title.ilike(pattern, escape=LIKE_ESCAPE),
                CannedResponse.body.ilike(pattern, escape=LIKE_ESCAPE),
            )
        )
    rows = list(
        await session.scalars(
            keyset(
                query,
                CannedResponse.created_at,
                CannedResponse.id,
                cursor=cursor,
                limit=limit,
                newest_first=False,
            )
        )
    )
    return split_page(rows, limit, lambda c: (c.created_at, c.id))


async def get_canned(
    session: AsyncSession, workspace_id: uuid.UUID, canned_id: uuid.UUID
) -> CannedResponse:
    row = await session.scalar(
        select(CannedResponse).where(
            CannedResponse.id == canned_id, CannedResponse.workspace_id == workspace_id
        )
    )
    if row is None:
        raise ProblemError(404, f"No canned response {canned_id} in this workspace.")
    return row


async def _shortcut_taken(
    session: AsyncSession, workspace_id: uuid.UUID, shortcut: str, other_than: uuid.UUID | None
) -> bool:
    query = select(CannedResponse.id).where(
        CannedResponse.workspace_id == workspace_id, CannedResponse.shortcut == shortcut
    )
    if other_than is not None:
        query = query.where(CannedResponse.id != other_than)
    return await session.scalar(query.limit(1)) is not None


async def _commit_or_conflict(session: AsyncSession, detail: str) -> None:
    try:
        await session.commit()
    except IntegrityError as exc:  # a concurrent writer took the unique value
        raise ProblemError(409, detail) from exc


async def create_canned(
    session: AsyncSession, workspace_id: uuid.UUID, body: CannedResponseCreate
) -> CannedResponse:
    taken = f"The shortcut {body.shortcut!r} is taken in this workspace."
    if await _shortcut_taken(session, workspace_id, body.shortcut, None):
        raise ProblemError(409, taken)
    now = utcnow()
    row = CannedResponse(
        id=uuid.uuid4(),
        workspace_id=workspace_id,
        shortcut=body.shortcut,
        title=body.title,
        body=body.body,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    await _commit_or_conflict(session, taken)
    return row


async def update_canned(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    canned_id: uuid.UUID,
    body: CannedResponseUpdate,
) -> CannedResponse:
    row = await get_canned(session, workspace_id, canned_id)
    taken = f"The shortcut {body.shortcut!r} is taken in this workspace."
    if body.shortcut is not None and body.shortcut != row.shortcut:
        if await _shortcut_taken(session, workspace_id, body.shortcut, row.id):
            raise ProblemError(409, taken)
        row.shortcut = body.shortcut
    if body.title is not None:
        row.title = body.title
    if body.body is not None:
        row.body = body.body
    row.updated_at = utcnow()
    await _commit_or_conflict(session, taken)
    return row


async def delete_canned(
    session: AsyncSession, workspace_id: uuid.UUID, canned_id: uuid.UUID
) -> None:
    row = await get_canned(session, workspace_id, canned_id)
    await session.delete(row)
    await session.commit()


async def list_outcome_codes(
    session: AsyncSession, workspace_id: uuid.UUID, *, limit: int, cursor: str | None
) -> tuple[list[OutcomeCode], str | None]:
    rows = list(
        await session.scalars(
            keyset(
                select(OutcomeCode).where(OutcomeCode.workspace_id == workspace_id),
                OutcomeCode.created_at,
                OutcomeCode.id,
                cursor=cursor,
                limit=limit,
                newest_first=False,
            )
        )
    )
    return split_page(rows, limit, lambda c: (c.created_at, c.id))


async def create_outcome_code(
    session: AsyncSession, workspace_id: uuid.UUID, body: OutcomeCodeCreate
) -> OutcomeCode:
    taken = f"The outcome code {body.code!r} exists in this workspace."
    exists = await session.scalar(
        select(OutcomeCode.id).where(
            OutcomeCode.workspace_id == workspace_id, OutcomeCode.code == body.code
        )
    )
    if exists is not None:
        raise ProblemError(409, taken)
    row = OutcomeCode(
        id=uuid.uuid4(),
        workspace_id=workspace_id,
        code=body.code,
        label=body.label,
        created_at=utcnow(),
    )
    session.add(row)
    await _commit_or_conflict(session, taken)
    return row
