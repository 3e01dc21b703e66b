"""What every email adapter shares: the email channel, SMTP sending, DSN receipts."""

from __future__ import annotations

import email
from email.policy import default as default_policy

from shared.channels.email.outbound import SmtpRelay, compose_email, send_email
from shared.channels.email.receipts import delivery_receipts
from shared.channels.protocol import (
    BaseChannelAdapter,
    ChannelContext,
    ChannelRuntime,
    DeliveryReceipt,
    InboundRequest,
    SendResult,
)
from shared.events import Channel, OutboundMessageRequested


class EmailAdapterBase(BaseChannelAdapter):
    channel = Channel.EMAIL

    def __init__(self, runtime: ChannelRuntime) -> None:
        self.limits = runtime.limits
        try:
            self.relay = runtime.service(SmtpRelay)
        except LookupError:
            self.relay = SmtpRelay(host=None)

    async def send(self, message: OutboundMessageRequested, ctx: ChannelContext) -> SendResult:  # noqa: ARG002
        mail = compose_email(message)
        await send_email(mail, self.relay)
        return SendResult(provider_message_id=str(mail["Message-ID"]))

    def raw_message(self, request: InboundRequest) -> bytes | None:
        """The raw MIME message a request carries, if it carries one."""
        return request.body if request.envelope is not None else None

    async def map_receipt(
        self,
        request: InboundRequest,
        ctx: ChannelContext,  # noqa: ARG002
    ) -> list[DeliveryReceipt]:
        raw = self.raw_message(request)
        if not raw or b"delivery-status" not in raw[:65536].lower():
            return []
        try:
            msg = email.message_from_bytes(raw, policy=default_policy)
            return delivery_receipts(msg)
        except Exception:  # a receipt that cannot be read is no receipt
            return []
