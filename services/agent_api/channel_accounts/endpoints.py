"""Channel accounts (admins only): a workspace's addresses on its channels, the adapter
that serves each, and a reference to the provider secret.

Ingest caches accounts for ``OMNI_CHANNEL_ACCOUNT_CACHE_SECONDS`` (30 s by default), so a
created, changed or disabled account is in force on every ingest replica within that,
without a restart. Accounts are disabled, never deleted: conversations and messages keep
pointing at them, and their address stays theirs.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.agent_api.channel_accounts import service
from services.agent_api.channel_accounts.schemas import (
    ChannelAccountCreate,
    ChannelAccountOut,
    ChannelAccountPage,
    ChannelAccountUpdate,
)
from services.agent_api.deps import CurrentAgent, SessionDep, StateDep, require_admin
from services.agent_api.rest import problems
from shared.events import Channel

router = APIRouter(prefix="/v1/channel-accounts", tags=["channel accounts"])

_S422 = "Unknown channel or adapter, an adapter of another channel, a malformed address "
_S422 += "or settings, or a secret reference that is not a file in the workspace's directory "
_S422 += "under `OMNI_CHANNEL_SECRETS_DIR` (any reference while that is unset)."


@router.post(
    "",
    status_code=201,
    response_model=ChannelAccountOut,
    responses=problems(
        401, 403, 409, 422, s409="The channel already has an account with this address.", s422=_S422
    ),
)
async def create_channel_account(
    body: ChannelAccountCreate,
    session: SessionDep,
    state: StateDep,
    claims: CurrentAgent,
    response: Response,
) -> ChannelAccountOut:
    """Create a channel account (admins only). The address is stored normalized and is
    unique per channel across all workspaces. The answer's `webhook_path` is where the
    provider must deliver on ingest; ingest serves the account within
    `OMNI_CHANNEL_ACCOUNT_CACHE_SECONDS` (30 s), the time it caches accounts (and
    misses: mail refused for the address just before may be refused that long)."""
    require_admin(claims)
    row = await service.create_account(
        session, claims.workspace_id, body, secrets_dir=state.settings.channel_secrets_dir
    )
    response.headers["Location"] = f"/v1/channel-accounts/{row.id}"
    return service.describe(row)


@router.get("", response_model=ChannelAccountPage, responses=problems(400, 401, 403, 422))
async def list_channel_accounts(
    session: SessionDep,
    claims: CurrentAgent,
    channel: Annotated[Channel | None, Query(description="Only this channel.")] = None,
    enabled: Annotated[
        bool | None, Query(description="Only enabled (true) or disabled (false) accounts.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> ChannelAccountPage:
    """The workspace's channel accounts, oldest first (admins only)."""
    require_admin(claims)
    rows, next_cursor = await service.list_accounts(
        session, claims.workspace_id, channel=channel, enabled=enabled, limit=limit, cursor=cursor
    )
    return ChannelAccountPage(items=[service.describe(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/{channel_account_id}",
    response_model=ChannelAccountOut,
    responses=problems(401, 403, 404, 422),
)
async def get_channel_account(
    channel_account_id: uuid.UUID, session: SessionDep, claims: CurrentAgent
) -> ChannelAccountOut:
    """One channel account (admins only)."""
    require_admin(claims)
    return service.describe(
        await service.get_account(session, claims.workspace_id, channel_account_id)
    )


@router.patch(
    "/{channel_account_id}",
    response_model=ChannelAccountOut,
    responses=problems(401, 403, 404, 422, s422=_S422),
)
async def update_channel_account(
    channel_account_id: uuid.UUID,
    body: ChannelAccountUpdate,
    session: SessionDep,
    state: StateDep,
    claims: CurrentAgent,
) -> ChannelAccountOut:
    """Change the display name, secret reference, settings (replaced as a whole), the
    adapter (another one of the same channel) or `enabled` (admins only). The channel
    and address cannot change: customers, providers and existing conversations know the
    account by them; create another account instead. Ingest sees the change within
    `OMNI_CHANNEL_ACCOUNT_CACHE_SECONDS` (30 s)."""
    require_admin(claims)
    row = await service.update_account(
        session,
        claims.workspace_id,
        channel_account_id,
        body,
        secrets_dir=state.settings.channel_secrets_dir,
    )
    return service.describe(row)


@router.delete("/{channel_account_id}", status_code=204, responses=problems(401, 403, 404, 422))
async def disable_channel_account(
    channel_account_id: uuid.UUID, session: SessionDep, claims: CurrentAgent
) -> Response:
    """Disable a channel account (admins only); it is kept, not deleted, since its
    conversations point at it, and `PATCH` with `enabled: true` turns it back on. Within
    `OMNI_CHANNEL_ACCOUNT_CACHE_SECONDS` (30 s) ingest refuses its webhooks (404) and
    mail to its address, and replies on its conversations go out from the workspace's
    oldest enabled account of the channel, if any. Repeating it changes nothing."""
    require_admin(claims)
    await service.disable_account(session, claims.workspace_id, channel_account_id)
    return Response(status_code=204)
