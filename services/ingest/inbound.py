"""Accepting a provider delivery: verify, refuse replays, parse, publish, then answer.

The provider is answered only after the broker acknowledged every message (acks=all),
so anything not yet safe is retried by the provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog

from services.ingest.deps import IngestState
from shared.bus.port import Bus, OutgoingRecord
from shared.channels.protocol import (
    ChannelAccount,
    ChannelAdapter,
    ChannelContext,
    ChannelRequestError,
    DeliveryReceipt,
    InboundRequest,
)
from shared.events import (
    DeliveryStatusReported,
    Event,
    MessageReceived,
    Topic,
    encode_event,
    inbound_key,
)
from shared.metrics import INBOUND_MESSAGES

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_SECONDS = 10.0


def channel_context(ingest: IngestState, account: ChannelAccount | None) -> ChannelContext:
    return ChannelContext(
        account=account,
        attachments=ingest.attachments,
        limits=ingest.limits,
        now=datetime.now(UTC),
    )


def receipt_records(
    adapter: ChannelAdapter, ctx: ChannelContext, receipts: Sequence[DeliveryReceipt]
) -> list[OutgoingRecord]:
    """Delivery receipts as ``omni.delivery.v1`` events (the router applies them)."""
    if ctx.account is None:
        if receipts:
            log.info("delivery receipts without an account ignored", adapter=adapter.name)
        return []
    workspace_id = ctx.account.workspace_id
    records = []
    for receipt in receipts:
        report = DeliveryStatusReported(
            workspace_id=workspace_id,
            channel=adapter.channel,
            message_id=receipt.message_id,
            provider_message_id=receipt.provider_message_id[:998],
            status=receipt.state.value,
            reason=receipt.reason[:500] if receipt.reason else None,
            adapter=adapter.name,
            occurred_at=receipt.occurred_at or ctx.now,
        )
        records.append(
            encode_event(
                Event.of(report, source=f"omniroute/ingest/{adapter.name}"),
                topic=Topic.DELIVERY.value,
                key=f"{workspace_id}:{receipt.message_id or receipt.provider_message_id}",
            )
        )
    return records


async def publish_inbound(
    bus: Bus,
    messages: Sequence[MessageReceived],
    *,
    source: str,
    extra: Sequence[OutgoingRecord] = (),
) -> None:
    """Publish and wait for the broker's acknowledgement; 503 (SMTP 451) if it did not."""
    if not messages and not extra:
        return
    records = [*extra] + [
        encode_event(
            Event.of(message, source=source, subject=message.thread_key),
            topic=Topic.INBOUND.value,
            key=inbound_key(message.workspace_id, message.channel, message.sender.address),
        )
        for message in messages
    ]
    try:
        await asyncio.wait_for(bus.publish_many(records), timeout=PUBLISH_TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning("broker did not acknowledge inbound messages", error=str(exc))
        raise ChannelRequestError(
            503,
            "The message could not be stored yet; retry.",
            permanent=False,
            smtp_reply="451 4.3.0 Temporary failure storing the message; try again later",
        ) from exc
    for message in messages:
        INBOUND_MESSAGES.labels(channel=message.channel.value).inc()


async def accept_delivery(
    ingest: IngestState,
    adapter: ChannelAdapter,
    request: InboundRequest,
    ctx: ChannelContext,
) -> list[MessageReceived]:
    """Verify, parse and publish one provider delivery; ChannelRequestError refuses it."""
    verification = await adapter.verify(request, ctx)
    replay_key = verification.replay_key
    if replay_key is not None and await ingest.replay_guard.seen(adapter.name, replay_key):
        raise ChannelRequestError(409, "This signed request was already accepted (replay).")
    messages = await adapter.parse(request, ctx)
    receipts = await adapter.map_receipt(request, ctx)
    await publish_inbound(
        ingest.bus,
        messages,
        source=f"omniroute/ingest/{adapter.name}",
        extra=receipt_records(adapter, ctx, receipts),
    )
    for receipt in receipts:
        log.info(
            "delivery receipt received",
            adapter=adapter.name,
            provider_message_id=receipt.provider_message_id,
            state=receipt.state.value,
            reason=receipt.reason,
        )
    if replay_key is not None:
        try:
            await ingest.replay_guard.remember(adapter.name, replay_key, now=ctx.now)
        except Exception as exc:  # the messages are safe; only replay protection is weaker
            log.warning("could not record webhook token", adapter=adapter.name, error=str(exc))
    return messages
