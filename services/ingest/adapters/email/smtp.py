"""Email straight from the SMTP listener: the raw message and its envelope."""

from __future__ import annotations

import email
from email.policy import default as default_policy

from services.ingest.adapters.email.base import EmailAdapterBase
from shared.channels.email.inbound import normalize_inbound_email
from shared.channels.email.mime import parse_mime
from shared.channels.email.receipts import is_delivery_report
from shared.channels.protocol import ChannelContext, ChannelRequestError, InboundRequest
from shared.events import MessageReceived


class SmtpEmailAdapter(EmailAdapterBase):
    """The ``email`` adapter: messages the SMTP listener accepted for an account.

    The SMTP conversation itself (recipients known, size limit, 250 only after the
    broker acknowledged) is ``services.ingest.smtp``; this is the parsing.
    """

    name = "email"

    async def parse(self, request: InboundRequest, ctx: ChannelContext) -> list[MessageReceived]:
        envelope = request.envelope
        if envelope is None:
            raise ChannelRequestError(400, "The email adapter receives over SMTP only.")
        if _is_bounce(request.body):
            return []  # a delivery report about our mail (map_receipt), not a customer
        parsed = parse_mime(request.body, limits=ctx.limits)
        return [
            await normalize_inbound_email(
                parsed, ctx, envelope_recipients=envelope.rcpt_tos, raw=request.body
            )
        ]


def _is_bounce(raw: bytes) -> bool:
    if b"delivery-status" not in raw[:65536].lower():
        return False
    try:
        return is_delivery_report(email.message_from_bytes(raw, policy=default_policy))
    except Exception:  # not readable as a report: parse it as a message (and refuse it there)
        return False
