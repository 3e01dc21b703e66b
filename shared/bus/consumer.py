"""The consume loop every service uses: fetch a batch, process it, then commit offsets.

Offsets are committed only after the handler returned, i.e. after its DB transaction
committed. A record that keeps failing goes to the topic's dead-letter topic with the
error attached, so the partition keeps moving; infrastructure outages (database or
broker unreachable) are retried with backoff instead, since they are no record's fault.
A batch whose transaction lost to a concurrent one (deadlock, serialization failure)
is tried again as a whole a few times before record by record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from shared.bus.port import Bus, BusRecord, ConsumerSource, OutgoingRecord
from shared.metrics import CONSUMED_RECORDS, DEAD_LETTERED_RECORDS
from shared.tracing import consume_span
from shared.transient import is_conflict_error, is_transient_error

log = structlog.get_logger(__name__)

RecordBatchHandler = Callable[[Sequence[BusRecord]], Awaitable[None]]


class PoisonRecordError(Exception):
    """Raised by a handler for a record that can never be processed."""


def dead_letter_record(record: BusRecord, error: BaseException) -> OutgoingRecord:
    headers = (
        *record.headers,
        ("omni_dlq_error", f"{type(error).__name__}: {error}"[:2000].encode()),
        ("omni_dlq_topic", record.topic.encode()),
        ("omni_dlq_partition", str(record.partition).encode()),
        ("omni_dlq_offset", str(record.offset).encode()),
    )
    return OutgoingRecord(
        topic=f"{record.topic}.dlq", key=record.key or b"", value=record.value, headers=headers
    )


@dataclass
class ConsumerLoop:
    name: str
    source: ConsumerSource
    handler: RecordBatchHandler
    bus: Bus
    max_batch: int = 200
    max_attempts: int = 3
    retry_backoff_seconds: float = 0.2
    max_backoff_seconds: float = 5.0
    is_transient: Callable[[BaseException], bool] = is_transient_error
    is_conflict: Callable[[BaseException], bool] = is_conflict_error

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()
        self._started = False
        self.processed = 0  # records processed and committed by this loop

    async def start(self) -> None:
        """Join the group / take positions; a service awaits this before reporting ready."""
        if not self._started:
            await self.source.start()
            self._started = True
            log.info("consumer started", consumer=self.name)

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self.start()
        try:
            while not self._stopping.is_set():
                records = await self.source.fetch(max_records=self.max_batch, timeout_ms=300)
                if not records:
                    await self.source.flush_commits()
                    continue
                async with self.source.processing():
                    with consume_span(self.name, records):
                        if not await self._process(records):
                            return  # stopping mid-retry: leave the batch uncommitted
                        await self.source.commit(records)
                CONSUMED_RECORDS.labels(consumer=self.name).inc(len(records))
                self.processed += len(records)
        finally:
            await self.source.stop()
            log.info("consumer stopped", consumer=self.name, records=self.processed)

    async def _backoff(self, attempt: int) -> bool:
        """Sleep before a retry; False when a stop was requested meanwhile."""
        delay = min(self.retry_backoff_seconds * 2 ** min(attempt, 10), self.max_backoff_seconds)
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return True
        return False

    async def _process(self, records: Sequence[BusRecord]) -> bool:
        """Process a batch; True when every record was handled or dead-lettered."""
        outage = 0
        conflicts = 0
        while True:
            try:
                await self.handler(records)
                return True
            except Exception as exc:
                if self.is_conflict(exc) and conflicts + 1 < self.max_attempts:
                    # Lost to a concurrent transaction (e.g. two routers reserving the
                    # same agents): the whole batch again, not record by record.
                    conflicts += 1
                    log.info("batch conflicted; retrying it", consumer=self.name, error=str(exc))
                    if not await self._backoff(conflicts - 1):
                        return False
                    continue
                if not self.is_transient(exc):
                    log.warning("batch failed; retrying record by record", error=str(exc))
                    break
                log.warning("transient failure; backing off", consumer=self.name, error=str(exc))
                outage += 1
                if not await self._backoff(outage):
                    return False
        for record in records:
            if not await self._process_one(record):
                return False
        return True

    async def _process_one(self, record: BusRecord) -> bool:
        failures = 0
        outage = 0
        while True:
            try:
                await self.handler([record])
                return True
            except Exception as exc:
                if self.is_transient(exc):
                    outage += 1
                    if not await self._backoff(outage):
                        return False
                    continue
                failures += 1
                if isinstance(exc, PoisonRecordError) or failures >= self.max_attempts:
                    await self.bus.publish(dead_letter_record(record, exc))
                    DEAD_LETTERED_RECORDS.labels(topic=record.topic).inc()
                    log.error(
                        "record dead-lettered",
                        consumer=self.name,
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        error=str(exc),
                    )
                    return True
                if not await self._backoff(failures):
                    return False
