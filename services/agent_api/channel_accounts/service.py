"""Channel accounts of a workspace: create, list, read, change, disable."""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath
from typing import Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.channel_accounts.schemas import (
    ChannelAccountCreate,
    ChannelAccountOut,
    ChannelAccountUpdate,
)
from services.agent_api.rest import keyset, split_page
from shared.channels.accounts import (
    InvalidAccountError,
    check_adapter,
    check_secret_ref,
    webhook_path,
)
from shared.db.models import ChannelAccount, utcnow
from shared.events import Channel
from shared.problems import ProblemError
from shared.transient import sqlstate_of

ADDRESS_CONSTRAINT: Final = "uq_channel_accounts_channel_address"
# SQLite (dev mode) names the columns of a violated unique constraint, not the constraint.
_SQLITE_ADDRESS_VIOLATION: Final = (
    "UNIQUE constraint failed: channel_accounts.channel, channel_accounts.address"
)


def describe(row: ChannelAccount) -> ChannelAccountOut:
    return ChannelAccountOut.model_validate(
        {
            "id": row.id,
            "channel": row.channel,
            "adapter": row.adapter,
            "address": row.address,
            "display_name": row.display_name,
            "secret_ref": row.secret_ref,
            "settings": dict(row.settings or {}),
            "enabled": row.enabled,
            "created_at": row.created_at,
            "webhook_path": webhook_path(row.adapter, row.id),
        }
    )


def _taken(channel: str, address: str) -> ProblemError:
    # The address is unique per channel across workspaces (ingest finds the workspace by
    # it), so the answer says it is taken without saying by whom.
    return ProblemError(409, f"The {channel} address {address!r} already has a channel account.")


def _invalid(field: str, exc: InvalidAccountError) -> ProblemError:
    """The 422 of a field the body's schema cannot check alone, shaped like the others."""
    return ProblemError(
        422,
        str(exc),
        extra={"errors": [{"loc": ["body", field], "msg": str(exc), "type": "value_error"}]},
    )


def _secret_ref(
    reference: str | None, workspace_id: uuid.UUID, secrets_dir: PurePosixPath | None
) -> str | None:
    if reference is None:
        return None
    try:
        return check_secret_ref(reference, secrets_dir=secrets_dir, workspace_id=workspace_id)
    except InvalidAccountError as exc:
        raise _invalid("secret_ref", exc) from exc


def _violates_address_constraint(exc: IntegrityError) -> bool:
    """Whether the insert lost on (channel, address), not on any other constraint."""
    if sqlstate_of(exc) == "23505":  # unique_violation; asyncpg names the constraint
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            if getattr(current, "constraint_name", None) == ADDRESS_CONSTRAINT:
                return True
            orig = getattr(current, "orig", None)
            current = orig if isinstance(orig, BaseException) else current.__cause__
        return False
    return _SQLITE_ADDRESS_VIOLATION in str(exc.orig)


async def create_account(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    body: ChannelAccountCreate,
    *,
    secrets_dir: PurePosixPath | None,
) -> ChannelAccount:
    """Inserted without a prior lookup: the unique constraint on (channel, address)
    decides, also between concurrent requests, and its violation is the 409."""
    secret_ref = _secret_ref(body.secret_ref, workspace_id, secrets_dir)
    row = ChannelAccount(
        id=uuid.uuid4(),
        workspace_id=workspace_id,
        channel=body.channel.value,
        adapter=body.adapter,
        address=body.address,
        display_name=body.display_name,
        secret_ref=secret_ref,
        settings=dict(body.settings),
        enabled=body.enabled,
        created_at=utcnow(),
    )
    session.add(row)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        if _violates_address_constraint(exc):
            raise _taken(body.channel.value, body.address) from exc
        raise
    return row


async def list_accounts(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    *,
    channel: Channel | None,
    enabled: bool | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[ChannelAccount], str | None]:
    query = select(ChannelAccount).where(ChannelAccount.workspace_id == workspace_id)
    if channel is not None:
        query = query.where(ChannelAccount.channel == channel.value)
    if enabled is not None:
        query = query.where(ChannelAccount.enabled.is_(enabled))
    rows = list(
        await session.scalars(
            keyset(
                query,
                ChannelAccount.created_at,
                ChannelAccount.id,
                cursor=cursor,
                limit=limit,
                newest_first=False,
            )
        )
    )
    return split_page(rows, limit, lambda a: (a.created_at, a.id))


async def get_account(
    session: AsyncSession, workspace_id: uuid.UUID, account_id: uuid.UUID
) -> ChannelAccount:
    row = await session.scalar(
        select(ChannelAccount).where(
            ChannelAccount.id == account_id, ChannelAccount.workspace_id == workspace_id
        )
    )
    if row is None:
        raise ProblemError(404, f"No channel account {account_id} in this workspace.")
    return row


async def update_account(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    account_id: uuid.UUID,
    body: ChannelAccountUpdate,
    *,
    secrets_dir: PurePosixPath | None,
) -> ChannelAccount:
    row = await get_account(session, workspace_id, account_id)
    secret_ref = _secret_ref(body.secret_ref, workspace_id, secrets_dir)
    if body.adapter is not None:
        try:
            row.adapter = check_adapter(Channel(row.channel), body.adapter)
        except InvalidAccountError as exc:
            raise _invalid("adapter", exc) from exc
    if "display_name" in body.model_fields_set:
        row.display_name = body.display_name
    if "secret_ref" in body.model_fields_set:
        row.secret_ref = secret_ref
    if body.settings is not None:
        row.settings = dict(body.settings)
    if body.enabled is not None:
        row.enabled = body.enabled
    await session.commit()
    return row


async def disable_account(
    session: AsyncSession, workspace_id: uuid.UUID, account_id: uuid.UUID
) -> None:
    row = await get_account(session, workspace_id, account_id)
    if row.enabled:
        row.enabled = False
        await session.commit()
