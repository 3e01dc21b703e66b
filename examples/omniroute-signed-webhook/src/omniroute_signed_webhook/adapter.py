"""A generic signed-webhook channel: JSON over HTTPS, HMAC-SHA256 signed both ways.

Inbound: the partner system POSTs to ``/v1/channels/signedwebhook/{account_id}``::

    X-Webhook-Timestamp: 1732290000
    X-Webhook-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>
    Content-Type: application/json

    {"id": "msg-1", "from": "user-42", "text": "Hello", "thread": "order-1234"}

or ``{"messages": [<message>, ...]}`` for several. ``id`` is the partner's message id
(the dedupe id: redeliveries must keep it); ``thread`` is optional (the sender's
conversation otherwise).

Outbound: replies are POSTed to the account's ``settings["outbound_url"]``, signed the
same way, as ``{"id": <our message id>, "to": <the sender it answers>, "text": ...,
"conversation_id": ...}``; a 2xx answer may name the partner's id as ``{"id": ...}``.
429/5xx and network errors are retried by omniroute's dispatcher, other answers are
permanent failures.

The account's secret (``secret_ref``) is the shared HMAC key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any, Final

import httpx
from shared.channels import (
    BaseChannelAdapter,
    ChannelAccount,
    ChannelContext,
    ChannelRequestError,
    ChannelRuntime,
    InboundRequest,
    PermanentDeliveryError,
    ProviderUnavailableError,
    SendResult,
    Verification,
)
from shared.events import Channel, MessageReceived, OutboundMessageRequested, Sender

NAME: Final = "signedwebhook"
TIMESTAMP_HEADER: Final = "x-webhook-timestamp"
SIGNATURE_HEADER: Final = "x-webhook-signature"
SIGNATURE_PREFIX: Final = "sha256="
_RETRYABLE: Final = frozenset({408, 429, 500, 502, 503, 504})


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``"<timestamp>." + body``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def signed_headers(secret: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """The headers a signed request carries (the partner's side, and our outbound)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        "X-Webhook-Timestamp": stamp,
        "X-Webhook-Signature": signature(secret, stamp, body),
    }


def _secret(account: ChannelAccount) -> str:
    if not account.secret:
        raise ChannelRequestError(401, "No signing secret is configured for this account.")
    return account.secret


def _text(item: Mapping[str, Any], key: str, *, required: bool = True, limit: int = 200) -> str:
    value = item.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ChannelRequestError(422, f"{key!r} must be a non-empty string.")
    value = value.strip()
    if len(value) > limit:
        raise ChannelRequestError(422, f"{key!r} is longer than {limit} characters.")
    return value


class SignedWebhookAdapter(BaseChannelAdapter):
    name = NAME
    channel = Channel.SOCIAL

    def __init__(self, runtime: ChannelRuntime) -> None:
        self.timeout_seconds = float(runtime.options.get("timeout_seconds", 10.0))

    async def verify(self, request: InboundRequest, ctx: ChannelContext) -> Verification:
        secret = _secret(ctx.require_account())
        stamp = request.headers.get(TIMESTAMP_HEADER, "").strip()
        given = request.headers.get(SIGNATURE_HEADER, "").strip()
        if not stamp or not given:
            raise ChannelRequestError(401, "The webhook signature headers are missing.")
        try:
            age = ctx.now.timestamp() - int(stamp)
        except ValueError as exc:
            raise ChannelRequestError(403, "The webhook timestamp is not a number.") from exc
        if abs(age) > ctx.limits.signature_max_age_seconds:
            raise ChannelRequestError(403, "The webhook timestamp is too old or in the future.")
        if not hmac.compare_digest(given, signature(secret, stamp, request.body)):
            raise ChannelRequestError(403, "The webhook signature does not match.")
        return Verification()

    async def parse(self, request: InboundRequest, ctx: ChannelContext) -> list[MessageReceived]:
        account = ctx.require_account()
        if not request.content_type.lower().startswith("application/json"):
            raise ChannelRequestError(415, "Signed webhooks are application/json.")
        try:
            data = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ChannelRequestError(400, "The body is not valid JSON.") from exc
        items = data.get("messages") if isinstance(data, dict) and "messages" in data else [data]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ChannelRequestError(422, "Expected a message object or {'messages': [...]}.")
        if len(items) > 100:
            raise ChannelRequestError(413, "At most 100 messages per request.")
        messages = []
        for item in items:
            sender = _text(item, "from", limit=320)
            text = _text(item, "text", required=False, limit=ctx.limits.max_text_chars)
            thread = _text(item, "thread", required=False) or sender
            messages.append(
                MessageReceived(
                    workspace_id=account.workspace_id,
                    channel=self.channel,
                    provider_message_id=_text(item, "id"),
                    thread_key=f"{NAME}:{thread}",
                    sender=Sender(address=sender),
                    text=text,
                    received_at=ctx.now,
                    channel_account_id=account.id,
                )
            )
        return messages

    async def send(self, message: OutboundMessageRequested, ctx: ChannelContext) -> SendResult:
        account = ctx.account
        if account is None:
            raise PermanentDeliveryError("no signed-webhook account to send from")
        url = str(account.settings.get("outbound_url") or "")
        if not url.startswith(("https://", "http://")):
            raise PermanentDeliveryError("the account has no outbound_url setting")
        try:
            secret = _secret(account)
        except ChannelRequestError as exc:
            raise PermanentDeliveryError(exc.detail) from exc
        body = json.dumps(
            {
                "id": str(message.message_id),
                "to": message.recipient_address,
                "text": message.text,
                "conversation_id": str(message.conversation_id),
            }
        ).encode()
        try:
            async with httpx.AsyncClient(timeout=self.timeout_seconds) as client:
                headers = signed_headers(secret, body)
                response = await client.post(url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise ProviderUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code in _RETRYABLE:
            raise ProviderUnavailableError(f"the partner answered {response.status_code}")
        if not response.is_success:
            raise PermanentDeliveryError(
                f"the partner refused the message: {response.status_code} {response.text[:200]}"
            )
        try:
            answer: Any = response.json()
        except ValueError:
            answer = {}
        partner_id = answer.get("id") if isinstance(answer, dict) else None
        return SendResult(provider_message_id=str(partner_id or message.message_id))
