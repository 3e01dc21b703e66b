"""SendGrid Inbound Parse: email POSTed as ``multipart/form-data``.

Two modes, both accepted: *parsed* (``headers``, ``text``, ``html``, ``from``, ``to``,
``subject``, ``envelope``, ``charsets``, ``attachment-info`` and ``attachmentN`` files)
and *raw* ("POST the raw, full MIME message": the message in ``email``). SendGrid
retries on errors and stops on 2xx; it has no "stop retrying" status.

Authentication: SendGrid calls the URL configured for the parse hostname; configure
it with credentials (``https://user:password@…/v1/channels/sendgrid/<account id>``)
and store ``user:password`` as the account's secret. The request then carries HTTP
Basic authentication, checked in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any

from services.ingest.adapters.email.base import EmailAdapterBase
from shared.channels.email.inbound import normalize_inbound_email
from shared.channels.email.mime import (
    ParsedAttachment,
    check_charset,
    headers_from_text,
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


def _json_field(form: FormData, name: str) -> Any:
    value = form.text(name)
    if value is None or not value.strip():
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise ChannelRequestError(422, f"The {name!r} field is not valid JSON.") from exc


def envelope_recipients(form: FormData) -> list[str]:
    envelope = _json_field(form, "envelope")
    if envelope is None:
        return []
    if not isinstance(envelope, dict):
        raise ChannelRequestError(422, "The 'envelope' field is not a JSON object.")
    to = envelope.get("to", [])
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not all(isinstance(x, str) for x in to):
        raise ChannelRequestError(422, "The envelope's 'to' is not a list of addresses.")
    return to


class SendGridInboundParseAdapter(EmailAdapterBase):
    name = "sendgrid"

    async def verify(self, request: InboundRequest, ctx: ChannelContext) -> Verification:
        account = ctx.require_account()
        expected = account.secret
        if not expected:
            raise ChannelRequestError(
                401, "No credentials are configured for this SendGrid account.", permanent=False
            )
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise ChannelRequestError(
                401,
                "SendGrid Inbound Parse must call with HTTP Basic credentials.",
                permanent=False,
                headers={"WWW-Authenticate": 'Basic realm="omniroute"'},
            )
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ChannelRequestError(401, "Malformed Basic credentials.") from exc
        if not hmac.compare_digest(given, expected.encode()):
            raise ChannelRequestError(403, "Wrong credentials for this SendGrid account.")
        return Verification()

    async def parse(self, request: InboundRequest, ctx: ChannelContext) -> list[MessageReceived]:
        form = parse_form(request.body, request.content_type)
        recipients = envelope_recipients(form)
        raw = form.get("email")
        if raw is not None:
            parsed = parse_mime(raw.value, limits=ctx.limits)
            return [
                await normalize_inbound_email(
                    parsed, ctx, envelope_recipients=recipients, raw=raw.value
                )
            ]
        headers_text = form.text("headers")
        if headers_text is None:
            raise ChannelRequestError(422, "Neither 'email' (raw) nor 'headers' (parsed) sent.")
        charsets = _json_field(form, "charsets") or {}
        if not isinstance(charsets, dict):
            raise ChannelRequestError(422, "The 'charsets' field is not a JSON object.")

        def field(name: str) -> str:
            charset = check_charset(str(charsets.get(name, "utf-8")), f"the {name!r} field")
            part = form.get(name)
            return part.value.decode(charset, errors="replace") if part else ""

        headers = headers_from_text(form.text("headers", charset="utf-8") or "")
        parsed = parsed_email(
            headers,
            text=field("text"),
            html=field("html") or None,
            attachments=self._attachments(form),
            limits=ctx.limits,
        )
        return [await normalize_inbound_email(parsed, ctx, envelope_recipients=recipients)]

    def _attachments(self, form: FormData) -> list[ParsedAttachment]:
        info = _json_field(form, "attachment-info") or {}
        if not isinstance(info, dict):
            raise ChannelRequestError(422, "The 'attachment-info' field is not a JSON object.")
        attachments = []
        for part in form.files():
            meta = info.get(part.name, {})
            meta = meta if isinstance(meta, dict) else {}
            filename = str(meta.get("filename") or part.filename or part.name)
            attachments.append(
                ParsedAttachment(
                    filename=filename,
                    content_type=str(
                        meta.get("type") or part.content_type or "application/octet-stream"
                    ),
                    content=part.value,
                    content_id=str(meta["content-id"]) if meta.get("content-id") else None,
                )
            )
        return attachments
