"""Meta's subscription handshake: ``GET /v1/channels/meta/{account_id}``.

Events arrive by ``POST`` on the same URL, through the generic channel webhook.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from services.ingest.adapters.channel_endpoints import refusal
from services.ingest.adapters.social.meta import MetaAdapter
from services.ingest.deps import StateDep
from shared.channels.protocol import ChannelRequestError
from shared.channels.registry import UnknownAdapterError

router = APIRouter(prefix="/v1/channels", tags=["channel webhooks"])


@router.get("/meta/{account_id}")
async def meta_verification(account_id: str, request: Request, ingest: StateDep) -> Response:
    """Echo ``hub.challenge`` when ``hub.verify_token`` is the account's; else 403."""
    try:
        try:
            adapter = ingest.registry.get(MetaAdapter.name)
        except UnknownAdapterError as exc:
            raise ChannelRequestError(404, "No channel adapter 'meta'.") from exc
        if not isinstance(adapter, MetaAdapter):
            raise ChannelRequestError(404, "The 'meta' adapter has no verification handshake.")
        try:
            account = await ingest.accounts.by_id(uuid.UUID(account_id))
        except ValueError:
            account = None
        if account is None or account.adapter != adapter.name:
            raise ChannelRequestError(404, f"No meta account {account_id!r}.")
        challenge = adapter.challenge(dict(request.query_params), account)
    except ChannelRequestError as error:
        return refusal(request, None, error)
    return PlainTextResponse(challenge, status_code=200)
