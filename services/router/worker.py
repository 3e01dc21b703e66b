"""The router's consume loop: one DB transaction per batch, offsets committed after it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import structlog

from services.router.media import apply_stored_attachments
from services.router.routing import batch_lookups, route_inbound, settle_new_conversations
from shared.bus.consumer import ConsumerLoop, PoisonRecordError, dead_letter_record
from shared.bus.port import Bus, BusRecord
from shared.correlation import correlation_scope
from shared.db.session import Database
from shared.events import (
    EventDecodeError,
    MessageAttachmentsStored,
    MessageReceived,
    Topic,
    decode_event,
)
from shared.metrics import DEAD_LETTERED_RECORDS, ROUTING_LATENCY
from shared.outbox import commit_and_publish, discard_pending
from shared.routing.engine import PolicyCache

log = structlog.get_logger(__name__)

ROUTER_GROUP_ID = "omni-router"


class InboundRouter:
    """Batch handler for ``omni.inbound.v1``."""

    def __init__(self, database: Database, bus: Bus, policies: PolicyCache | None = None) -> None:
        self._database = database
        self._bus = bus
        self._policies = policies or PolicyCache()
        self._known_workspaces: set[uuid.UUID] = set()

    async def handle(self, records: Sequence[BusRecord]) -> None:
        inbound: list[tuple[BusRecord, MessageReceived | MessageAttachmentsStored, str | None]] = []
        # Records that can never be routed go to the dead-letter topic after the rest
        # committed, instead of failing the whole batch into slow record-by-record
        # retries (a stray record on a shared topic would otherwise cost its batch).
        poison: list[tuple[BusRecord, PoisonRecordError]] = []
        for record in records:
            try:
                event = decode_event(record)
            except EventDecodeError as exc:
                poison.append((record, PoisonRecordError(str(exc))))
                continue
            if not isinstance(event.data, MessageReceived | MessageAttachmentsStored):
                poison.append(
                    (
                        record,
                        PoisonRecordError(f"unexpected event type {event.type} on inbound topic"),
                    )
                )
                continue
            inbound.append((record, event.data, event.correlationid))
        if inbound:
            await self._route(inbound, poison)
        for record, error in sorted(poison, key=lambda p: (p[0].partition, p[0].offset)):
            await self._bus.publish(dead_letter_record(record, error))
            DEAD_LETTERED_RECORDS.labels(topic=record.topic).inc()
            log.error(
                "record dead-lettered",
                consumer="router-inbound",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=str(error),
            )

    async def _route(
        self,
        inbound: list[tuple[BusRecord, MessageReceived | MessageAttachmentsStored, str | None]],
        poison: list[tuple[BusRecord, PoisonRecordError]],
    ) -> None:
        """Route the batch in one transaction; records of unknown workspaces join
        ``poison``."""
        with ROUTING_LATENCY.time():
            async with self._database.sessions() as session:
                try:
                    lookups = await batch_lookups(
                        session,
                        [m for _, m, _ in inbound if isinstance(m, MessageReceived)],
                        known_workspaces=self._known_workspaces,
                    )
                    poison.extend(
                        (record, PoisonRecordError(f"unknown workspace {message.workspace_id}"))
                        for record, message, _ in inbound
                        if isinstance(message, MessageReceived)
                        and message.workspace_id not in lookups.workspaces
                    )
                    for _, message, correlation_id in inbound:
                        with correlation_scope(correlation_id):
                            if isinstance(message, MessageAttachmentsStored):
                                await settle_new_conversations(session, lookups)
                                await apply_stored_attachments(session, message)
                            elif message.workspace_id in lookups.workspaces:
                                await route_inbound(
                                    session, message, self._policies, lookups=lookups
                                )
                    await settle_new_conversations(session, lookups)
                    await commit_and_publish(
                        session, self._bus, self._database.sessions, publish_wait_seconds=None
                    )
                except BaseException:
                    discard_pending(session)
                    raise


def inbound_consumer(
    database: Database,
    bus: Bus,
    *,
    policies: PolicyCache | None = None,
    group_id: str = ROUTER_GROUP_ID,
    from_latest: bool = False,
    max_attempts: int = 3,
) -> ConsumerLoop:
    return ConsumerLoop(
        name="router-inbound",
        source=bus.consumer([Topic.INBOUND.value], group_id=group_id, from_latest=from_latest),
        handler=InboundRouter(database, bus, policies).handle,
        bus=bus,
        max_attempts=max_attempts,
    )
