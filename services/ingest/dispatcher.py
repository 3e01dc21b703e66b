"""Outbound dispatcher: replies from ``omni.outbound.v1`` through the channel's adapter.

Two consumers share this handler. Web chat is read by every ingest replica without a
consumer group (each delivers to the sockets it holds; a customer who was not
connected reads the history on reconnect). Provider channels (email, SMS, social) are
read in one consumer group: a provider that is unavailable is retried with backoff (the
partition waits), a refusal goes to the dead-letter topic.

A provider reply is sent once across restarts and rebalances: records read again after
a process died (those since the last offset commit) are looked up in the send ledger
(``services.ingest.send_ledger``), one query per batch, and a reply found there is not
sent again. Its "sent" report is published again from the ledger, since the first one
may have been lost with the process; the router ignores a status it already has. The
ledger row is written right after the provider accepted the reply, so windows remain:
a process that dies between the provider's acceptance and that write sends the reply
again; and after a rebalance, a batch the old owner is still sending past the revoke
wait (``REVOKE_WAIT_SECONDS``) can meet the new owner's read of the same records before
either wrote its rows, so both send. The providers used here take no idempotency key to
close them.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime

import structlog

from services.ingest.accounts import AccountDirectory
from services.ingest.send_ledger import LedgerEntry, SendLedger
from shared.bus.consumer import dead_letter_record
from shared.bus.port import Bus, BusRecord
from shared.channels.attachments import AttachmentStore
from shared.channels.protocol import (
    ChannelAccount,
    ChannelContext,
    ChannelLimits,
    DeliveryState,
    PermanentDeliveryError,
    ProviderUnavailableError,
)
from shared.channels.registry import ChannelRegistry, UnknownAdapterError
from shared.events import (
    Channel,
    DeliveryStatusReported,
    Event,
    EventDecodeError,
    OutboundMessageRequested,
    Topic,
    decode_event,
    encode_event,
)
from shared.metrics import OUTBOUND_FAILURES

log = structlog.get_logger(__name__)

SENT_MEMORY = 10_000
EVENT_SOURCE = "omniroute/ingest/dispatcher"

# (workspace, channel, recipient) -> why the message must not be sent, or None.
ConsentCheck = Callable[[uuid.UUID, Channel, str], Awaitable[str | None]]


class OutboundDispatcher:
    def __init__(
        self,
        registry: ChannelRegistry,
        accounts: AccountDirectory,
        attachments: AttachmentStore,
        limits: ChannelLimits,
        *,
        channels: Collection[Channel],
        bus: Bus | None = None,
        consent: ConsentCheck | None = None,
        ledger: SendLedger | None = None,
    ) -> None:
        """With a ``bus``, delivery status goes to ``omni.delivery.v1`` (sent, or failed
        with the reason) and a refused reply is dead-lettered at once; ``consent``
        keeps replies from recipients who opted out; ``ledger`` keeps replies already
        handed to a provider, by this process or an earlier one, from being sent again
        (provider channels only: web chat is pushed by every replica)."""
        if ledger is not None and Channel.WEBCHAT in channels:
            raise ValueError("web chat is pushed by every replica; it has no send ledger")
        self._bus = bus
        self._consent = consent
        self._registry = registry
        self._accounts = accounts
        self._attachments = attachments
        self._limits = limits
        self._channels = frozenset(channels)
        self._ledger = ledger
        # Replies this process settled (sent, refused, found in the ledger): a batch
        # retried after a later record failed neither sends them twice nor asks the
        # ledger about them again.
        self._sent: OrderedDict[uuid.UUID, None] = OrderedDict()

    async def handle(self, records: Sequence[BusRecord]) -> None:
        pending: list[tuple[OutboundMessageRequested, BusRecord]] = []
        for record in records:
            try:
                event = decode_event(record)
            except EventDecodeError as exc:
                log.error("undecodable outbound record skipped", error=str(exc))
                continue
            payload = event.data
            if not isinstance(payload, OutboundMessageRequested):
                continue
            if payload.channel not in self._channels or payload.message_id in self._sent:
                continue
            pending.append((payload, record))
        sent_before: dict[uuid.UUID, LedgerEntry] = {}
        if self._ledger is not None and pending:
            sent_before = await self._ledger.sent([payload for payload, _ in pending])
        for payload, record in pending:
            if payload.message_id in self._sent:  # twice in this batch
                continue
            earlier = sent_before.get(payload.message_id)
            if earlier is None:
                await self._send(payload, record)
            else:
                await self._report_sent_before(payload, earlier)
            self._remember(payload.message_id)

    def _remember(self, message_id: uuid.UUID) -> None:
        self._sent[message_id] = None
        while len(self._sent) > SENT_MEMORY:
            self._sent.popitem(last=False)

    async def _report_sent_before(
        self, payload: OutboundMessageRequested, earlier: LedgerEntry
    ) -> None:
        """A reply the ledger knows was handed to its provider: not sent again; its
        "sent" report again, as the first one was (that one may have died with the
        process that sent it). Every adapter reports "sent" on acceptance, and the
        router never lets a status go back, so the repeat cannot undo a later one."""
        log.info(
            "reply already sent; not sent again",
            adapter=earlier.adapter,
            message_id=str(payload.message_id),
            provider_message_id=earlier.provider_message_id,
        )
        await self._report(
            payload,
            DeliveryState.SENT,
            adapter=earlier.adapter,
            provider_message_id=earlier.provider_message_id,
            occurred_at=earlier.sent_at,
        )

    async def _report(
        self,
        payload: OutboundMessageRequested,
        state: DeliveryState,
        *,
        adapter: str | None,
        provider_message_id: str | None = None,
        reason: str | None = None,
        occurred_at: datetime | None = None,
    ) -> None:
        if self._bus is None:
            return
        report = DeliveryStatusReported(
            workspace_id=payload.workspace_id,
            channel=payload.channel,
            message_id=payload.message_id,
            conversation_id=payload.conversation_id,
            provider_message_id=provider_message_id,
            status=state.value,
            reason=reason[:500] if reason else None,
            adapter=adapter,
            occurred_at=occurred_at or datetime.now(UTC),
        )
        try:
            await self._bus.publish(
                encode_event(
                    Event.of(report, source=EVENT_SOURCE, subject=str(payload.conversation_id)),
                    topic=Topic.DELIVERY.value,
                    key=f"{payload.workspace_id}:{payload.message_id}",
                )
            )
        except Exception as exc:  # the reply's fate is settled; only its status is late
            log.warning("delivery status not published", error=str(exc), state=state.value)

    async def _send(self, payload: OutboundMessageRequested, record: BusRecord) -> None:
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
        if self._consent is not None:
            refusal = await self._consent(
                payload.workspace_id, payload.channel, payload.recipient_address
            )
            if refusal is not None:
                log.info(
                    "reply not sent: refused before sending", message_id=str(payload.message_id)
                )
                await self._report(
                    payload, DeliveryState.FAILED, adapter=adapter.name, reason=refusal
                )
                return
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
            if self._bus is None:
                raise
            await self._report(payload, DeliveryState.FAILED, adapter=adapter.name, reason=str(exc))
            await self._bus.publish(dead_letter_record(record, exc))
            return
        # Before anything else can fail: a retried batch must not send it again.
        self._remember(payload.message_id)
        sent_at = datetime.now(UTC)
        await self._record_sent(payload, adapter.name, result.provider_message_id, sent_at)
        await self._report(
            payload,
            result.state,
            adapter=adapter.name,
            provider_message_id=result.provider_message_id,
            reason=result.detail,
            occurred_at=sent_at,
        )
        log.info(
            "reply sent",
            adapter=adapter.name,
            message_id=str(payload.message_id),
            provider_message_id=result.provider_message_id,
        )

    async def _record_sent(
        self,
        payload: OutboundMessageRequested,
        adapter: str,
        provider_message_id: str,
        sent_at: datetime,
    ) -> None:
        """Write the ledger row. A failure is logged, not raised: the reply is out, and
        a retry of the batch would not send it again (this process remembers it); only
        a process that dies before the batch's offsets are committed would."""
        if self._ledger is None:
            return
        try:
            await self._ledger.record(
                payload,
                adapter=adapter,
                provider_message_id=provider_message_id,
                now=sent_at,
            )
        except Exception as exc:  # the reply is sent; only its protection is missing
            log.warning(
                "sent reply not recorded in the send ledger",
                message_id=str(payload.message_id),
                error=str(exc),
            )
