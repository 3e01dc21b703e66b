"""Outbound dispatcher: replies from ``omni.outbound.v1`` through the channel's adapter.

Two consumers share this handler. Web chat is read by every ingest replica without a
consumer group (each delivers to the sockets it holds; a customer who was not
connected reads the history on reconnect). Provider channels (email, …) are read in
one consumer group, so each reply is sent once: a provider that is unavailable is
retried with backoff (the partition waits), a refusal goes to the dead-letter topic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence
from datetime import UTC, datetime

import structlog

from services.ingest.accounts import AccountDirectory
from shared.bus.port import BusRecord
from shared.channels.attachments import AttachmentStore
from shared.channels.protocol import (
    ChannelAccount,
    ChannelContext,
    ChannelLimits,
    PermanentDeliveryError,
    ProviderUnavailableError,
)
from shared.channels.registry import ChannelRegistry, UnknownAdapterError
from shared.events import Channel, EventDecodeError, OutboundMessageRequested, decode_event
from shared.metrics import OUTBOUND_FAILURES

log = structlog.get_logger(__name__)

SENT_MEMORY = 10_000


class OutboundDispatcher:
    def __init__(
        self,
        registry: ChannelRegistry,
        accounts: AccountDirectory,
        attachments: AttachmentStore,
        limits: ChannelLimits,
        *,
        channels: Collection[Channel],
    ) -> None:
        self._registry = registry
        self._accounts = accounts
        self._attachments = attachments
        self._limits = limits
        self._channels = frozenset(channels)
        # Replies already handed to a provider: a batch retried after a later record
        # failed does not send them twice.
        self._sent: OrderedDict[str, None] = OrderedDict()

    async def handle(self, records: Sequence[BusRecord]) -> None:
        for record in records:
            try:
                event = decode_event(record)
            except EventDecodeError as exc:
                log.error("undecodable outbound record skipped", error=str(exc))
                continue
            payload = event.data
            if not isinstance(payload, OutboundMessageRequested):
                continue
            if payload.channel not in self._channels:
                continue
            key = str(payload.message_id)
            if key in self._sent:
                continue
            await self._send(payload)
            self._sent[key] = None
            while len(self._sent) > SENT_MEMORY:
                self._sent.popitem(last=False)

    async def _send(self, payload: OutboundMessageRequested) -> None:
        account: ChannelAccount | None = None
        if payload.channel_account_id is not None:
            account = await self._accounts.by_id(payload.channel_account_id)
        try:
            adapter = self._registry.for_outbound(
                payload.channel, account.adapter if account else None
            )
        except UnknownAdapterError as exc:
            OUTBOUND_FAILURES.labels(channel=payload.channel.value, provider="none").inc()
            log.warning("no outbound adapter", channel=payload.channel.value, error=str(exc))
            return
        ctx = ChannelContext(
            account=account,
            attachments=self._attachments,
            limits=self._limits,
            now=datetime.now(UTC),
        )
        try:
            result = await adapter.send(payload, ctx)
        except ProviderUnavailableError as exc:
            OUTBOUND_FAILURES.labels(channel=payload.channel.value, provider=adapter.name).inc()
            log.warning(
                "provider unavailable; will retry",
                adapter=adapter.name,
                message_id=str(payload.message_id),
                error=str(exc),
            )
            raise
        except PermanentDeliveryError as exc:
            OUTBOUND_FAILURES.labels(channel=payload.channel.value, provider=adapter.name).inc()
            log.error(
                "provider refused the reply",
                adapter=adapter.name,
                message_id=str(payload.message_id),
                error=str(exc),
            )
            raise
        log.info(
            "reply sent",
            adapter=adapter.name,
            message_id=str(payload.message_id),
            provider_message_id=result.provider_message_id,
        )
