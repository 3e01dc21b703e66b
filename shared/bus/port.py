"""The bus port: what services need from a log-based broker, nothing more.

Semantics both implementations keep: records with the same key land on the same
partition and are consumed in order; within a consumer group each partition has one
consumer; offsets move only when the consumer commits them (after its DB commit);
``publish`` returns only once the broker acknowledged the record durably.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class BusRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default=())

    def header(self, name: str) -> bytes | None:
        for header_name, value in self.headers:
            if header_name == name:
                return value
        return None


class ConsumerSource(Protocol):
    """One consumer: fetch batches, commit what was processed."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def fetch(self, *, max_records: int, timeout_ms: int) -> list[BusRecord]: ...

    async def commit(self, records: Sequence[BusRecord]) -> None:
        """Commit, per partition, the offset after the last of ``records`` (a source may
        defer it briefly to commit several batches at once; see ``flush_commits``)."""
        ...

    async def flush_commits(self) -> None:
        """Commit whatever ``commit`` deferred; called when the consumer is idle."""
        ...

    def processing(self) -> asyncio.Lock:
        """Taken after ``fetch`` returned a batch and held until it is committed.

        A rebalance waits for it, so it never revokes a batch in progress. Never hold it
        across ``fetch``: during a rebalance fetch waits for the new assignment.
        """
        ...


class Bus(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def ensure_topics(self, names: Sequence[str]) -> None: ...

    async def publish(self, record: OutgoingRecord) -> None:
        """Return only after the broker acknowledged the record (acks=all on Kafka)."""
        ...

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        """Publish all, in order per key; return after every record was acknowledged."""
        ...

    def consumer(
        self,
        topics: Sequence[str],
        *,
        group_id: str | None,
        from_latest: bool = False,
        gather_ms: int = 0,
    ) -> ConsumerSource:
        """A consumer in ``group_id``; ``None`` reads every partition without a group.

        ``gather_ms``: how long a fetch may wait to gather more records (0: answered as
        soon as any record is there). For consumers no person waits on, so that they
        handle (and commit) fewer, larger batches."""
        ...

    async def healthy(self) -> bool: ...


def last_offsets_by_partition(records: Sequence[BusRecord]) -> dict[tuple[str, int], int]:
    """The highest offset per (topic, partition) among ``records``."""
    last: dict[tuple[str, int], int] = {}
    for record in records:
        partition = (record.topic, record.partition)
        if record.offset > last.get(partition, -1):
            last[partition] = record.offset
    return last
