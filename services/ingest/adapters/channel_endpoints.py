"""Provider webhooks for every adapter: ``POST /v1/channels/{adapter}/{account_id}``.

The URL names the adapter and the workspace's channel account (the account decides
the workspace and holds the provider secret). The body is read here, with the
channel's own size limit, so even a too-large request is answered the way its
provider understands (e.g. Mailgun's 406).
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from services.ingest.deps import IngestState, StateDep
from services.ingest.inbound import accept_delivery, channel_context
from shared.channels.protocol import ChannelAdapter, ChannelRequestError, InboundRequest
from shared.channels.registry import UnknownAdapterError
from shared.problems import problem_response

router = APIRouter(prefix="/v1/channels", tags=["channel webhooks"])

FORM_OVERHEAD_BYTES = 256 * 1024


def webhook_body_limit(ingest: IngestState) -> int:
    """Largest webhook body: the largest email plus the form's own fields."""
    return ingest.limits.max_message_bytes + FORM_OVERHEAD_BYTES


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError as exc:
            raise ChannelRequestError(400, "Content-Length is not a number.") from exc
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ChannelRequestError:
    return ChannelRequestError(413, f"The request body is larger than {limit} bytes.")


def inbound_request(request: Request, body: bytes) -> InboundRequest:
    return InboundRequest(
        body=body,
        method=request.method,
        url=str(request.url),
        headers={k.lower(): v for k, v in request.headers.items()},
        query=dict(request.query_params),
        path_params={k: str(v) for k, v in request.path_params.items()},
    )


def refusal(
    request: Request,
    adapter: ChannelAdapter | None,
    error: ChannelRequestError,
) -> Response:
    """The problem+json answer to a refused delivery, in the provider's terms."""
    status = adapter.refusal_status(error) if adapter is not None else error.status
    return problem_response(
        request,
        status,
        error.detail,
        headers=error.headers or None,
        extra={"retryable": not error.permanent},
    )


async def serve_webhook(
    request: Request, ingest: IngestState, adapter_name: str, account_id: str
) -> Response:
    adapter: ChannelAdapter | None = None
    try:
        try:
            adapter = ingest.registry.get(adapter_name)
        except UnknownAdapterError as exc:
            raise ChannelRequestError(404, f"No channel adapter {adapter_name!r}.") from exc
        try:
            account = await ingest.accounts.by_id(uuid.UUID(account_id))
        except ValueError:
            account = None
        if account is None or account.adapter != adapter.name:
            raise ChannelRequestError(404, f"No {adapter_name} account {account_id!r}.")
        try:
            body = await read_body(request, webhook_body_limit(ingest))
        except ClientDisconnect:
            return Response(status_code=400)
        ctx = channel_context(ingest, account)
        messages = await accept_delivery(ingest, adapter, inbound_request(request, body), ctx)
    except ChannelRequestError as error:
        return refusal(request, adapter, error)
    answer = adapter.acknowledge(messages)
    return Response(answer.body, status_code=answer.status, media_type=answer.content_type)


@router.post("/{adapter_name}/{account_id}")
async def channel_webhook(
    adapter_name: str, account_id: str, request: Request, ingest: StateDep
) -> Response:
    """A provider's delivery to a workspace's channel account (e.g. SendGrid Inbound
    Parse, Mailgun routes). Answered 2xx only after the broker acknowledged it."""
    return await serve_webhook(request, ingest, adapter_name, account_id)


@router.post("/{adapter_name}/{account_id}/{variant}")
async def channel_webhook_variant(
    adapter_name: str,
    account_id: str,
    variant: str,  # noqa: ARG001 - e.g. Mailgun wants raw-MIME URLs to end in "mime"
    request: Request,
    ingest: StateDep,
) -> Response:
    """The same webhook under a provider-required suffix (Mailgun raw MIME: ``…/mime``)."""
    return await serve_webhook(request, ingest, adapter_name, account_id)
