"""Mailgun routes: email forwarded by a ``forward()`` route action.

Fields: ``timestamp``, ``token``, ``signature`` (hex HMAC-SHA256 of timestamp+token
with the account's webhook signing key), and either the parsed message
(``message-headers`` as a JSON list of ``[name, value]``, ``body-plain``,
``stripped-text``, ``body-html``, ``recipient``, ``attachment-N`` files) or, for URLs
ending in ``mime``, the raw message in ``body-mime``.

Mailgun retries everything but 200 and 406 for hours, so a request that can never be
accepted (malformed, replayed) is answered 406; a bad or stale signature gets 403, as
a key rotation on our side would be fixed by a retry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from services.ingest.adapters.email.base import EmailAdapterBase
from shared.channels.email.inbound import normalize_inbound_email
from shared.channels.email.mime import (
    ParsedAttachment,
    headers_from_pairs,
    parse_mime,
    parsed_email,
)
from shared.channels.forms import FormData, parse_form
from shared.channels.protocol import (
    ChannelContext,
    ChannelRequestError,
    InboundRequest,
    Verification,
)
from shared.events import MessageReceived

MAILGUN_STOP_RETRYING = 406


def mailgun_signature(signing_key: str, timestamp: str, token: str) -> str:
    return hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


class MailgunRoutesAdapter(EmailAdapterBase):
    name = "mailgun"

    def refusal_status(self, error: ChannelRequestError) -> int:
        if error.permanent and error.status not in (401, 403):
            return MAILGUN_STOP_RETRYING
        return error.status

    async def verify(self, request: InboundRequest, ctx: ChannelContext) -> Verification:
        account = ctx.require_account()
        if not account.secret:
            raise ChannelRequestError(
                401, "No signing key is configured for this Mailgun account.", permanent=False
            )
        form = parse_form(request.body, request.content_type)
        timestamp = form.text("timestamp") or ""
        token = form.text("token") or ""
        signature = form.text("signature") or ""
        if not timestamp or not token or not signature:
            raise ChannelRequestError(403, "The signature fields are missing.", permanent=False)
        expected = mailgun_signature(account.secret, timestamp, token)
        if not hmac.compare_digest(expected, signature.strip().lower()):
            raise ChannelRequestError(403, "The signature does not match.", permanent=False)
        try:
            signed_at = int(timestamp)
        except ValueError as exc:
            raise ChannelRequestError(403, "The timestamp is not a number.") from exc
        age = ctx.now.timestamp() - signed_at
        if abs(age) > ctx.limits.signature_max_age_seconds:
            raise ChannelRequestError(
                403,
                f"The signature is {int(age)} s old; at most "
                f"{ctx.limits.signature_max_age_seconds} s are accepted.",
                permanent=False,
            )
        if len(token) > 200:
            raise ChannelRequestError(403, "The token is too long.")
        return Verification(replay_key=token)

    def raw_message(self, request: InboundRequest) -> bytes | None:
        try:
            form = parse_form(request.body, request.content_type)
        except ChannelRequestError:
            return None
        raw = form.get("body-mime")
        return raw.value if raw is not None else None

    async def parse(self, request: InboundRequest, ctx: ChannelContext) -> list[MessageReceived]:
        form = parse_form(request.body, request.content_type)
        recipients = [r.strip() for r in (form.text("recipient") or "").split(",") if r.strip()]
        raw = form.get("body-mime")
        if raw is not None:
            parsed = parse_mime(raw.value, limits=ctx.limits)
            return [
                await normalize_inbound_email(
                    parsed, ctx, envelope_recipients=recipients, raw=raw.value
                )
            ]
        headers_json = form.text("message-headers")
        if headers_json is None:
            raise ChannelRequestError(422, "Neither 'body-mime' nor 'message-headers' sent.")
        try:
            pairs = json.loads(headers_json)
        except (ValueError, RecursionError) as exc:
            raise ChannelRequestError(422, "'message-headers' is not valid JSON.") from exc
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in pairs
        ):
            raise ChannelRequestError(422, "'message-headers' is not a list of [name, value].")
        parsed = parsed_email(
            headers_from_pairs([(name, value) for name, value in pairs]),
            text=form.text("body-plain") or "",
            html=form.text("body-html"),
            stripped_text=(form.text("stripped-text") or "").strip() or None,
            attachments=_attachments(form),
            limits=ctx.limits,
        )
        return [await normalize_inbound_email(parsed, ctx, envelope_recipients=recipients)]


def _attachments(form: FormData) -> list[ParsedAttachment]:
    return [
        ParsedAttachment(
            filename=part.filename or part.name,
            content_type=part.content_type or "application/octet-stream",
            content=part.value,
        )
        for part in form.files()
        if part.name.startswith("attachment")
    ]


def sign_for_test(signing_key: str, *, token: str, timestamp: int | None = None) -> dict[str, str]:
    """The three signature fields Mailgun would send (for tests and stand-ins)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "timestamp": stamp,
        "token": token,
        "signature": mailgun_signature(signing_key, stamp, token),
    }
