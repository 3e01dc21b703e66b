"""In-process twin of the Kafka bus for unit tests and the single-process dev mode.

Same semantics as the Kafka implementation for what services rely on: partition by
key (so one key stays in order), consumer groups sharing partitions, committed
offsets per group, and groupless consumers reading everything.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.bus.port import BusRecord, OutgoingRecord, last_offsets_by_partition
from shared.tracing import publish_span


@dataclass
class _Topic:
    partitions: list[list[BusRecord]]


@dataclass
class _Group:
    members: list[MemoryConsumer] = field(default_factory=list)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    generation: int = 0


class MemoryBus:
    def __init__(self, *, partitions: int = 3) -> None:
        self._partitions = partitions
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _Group] = {}
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def healthy(self) -> bool:
        return True

    async def ensure_topics(self, names: Sequence[str]) -> None:
        for name in names:
            self._topic(name)

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = _Topic(partitions=[[] for _ in range(self._partitions)])
            self._topics[name] = topic
        return topic

    def partition_for(self, key: bytes) -> int:
        return zlib.crc32(key) % self._partitions

    async def publish(self, record: OutgoingRecord) -> None:
        await self.publish_many([record])

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        with publish_span(records, system="memory") as traced:
            await self._append(traced)

    async def _append(self, records: Sequence[OutgoingRecord]) -> None:
        async with self._changed:
            for record in records:
                partition = self.partition_for(record.key)
                log = self._topic(record.topic).partitions[partition]
                log.append(
                    BusRecord(
                        topic=record.topic,
                        partition=partition,
                        offset=len(log),
                        key=record.key,
                        value=record.value,
                        headers=record.headers,
                    )
                )
            self._changed.notify_all()

    def records(self, topic: str) -> list[BusRecord]:
        """Every record ever published to ``topic`` (for tests and inspection)."""
        return [r for log in self._topic(topic).partitions for r in log]

    def consumer(
        self,
        topics: Sequence[str],
        *,
        group_id: str | None,
        from_latest: bool = False,
        gather_ms: int = 0,  # noqa: ARG002 - nothing to gather in memory
    ) -> MemoryConsumer:
        return MemoryConsumer(self, list(topics), group_id=group_id, from_latest=from_latest)

    # group coordination -------------------------------------------------------------

    def _join(self, consumer: MemoryConsumer) -> None:
        if consumer.group_id is None:
            return
        group = self._groups.setdefault(consumer.group_id, _Group())
        group.members.append(consumer)
        group.generation += 1

    def _leave(self, consumer: MemoryConsumer) -> None:
        if consumer.group_id is None:
            return
        group = self._groups[consumer.group_id]
        group.members.remove(consumer)
        group.generation += 1

    def _assignment(self, consumer: MemoryConsumer) -> list[tuple[str, int]]:
        every = [(t, p) for t in consumer.topics for p in range(len(self._topic(t).partitions))]
        if consumer.group_id is None:
            return every
        members = self._groups[consumer.group_id].members
        index = members.index(consumer)
        return [tp for i, tp in enumerate(every) if i % len(members) == index]

    def _committed(self, group_id: str, partition: tuple[str, int]) -> int | None:
        return self._groups[group_id].committed.get(partition)

    def _commit(self, group_id: str, offsets: dict[tuple[str, int], int]) -> None:
        committed = self._groups[group_id].committed
        for partition, offset in offsets.items():
            committed[partition] = max(committed.get(partition, 0), offset)


class MemoryConsumer:
    def __init__(
        self,
        bus: MemoryBus,
        topics: list[str],
        *,
        group_id: str | None,
        from_latest: bool,
    ) -> None:
        self._bus = bus
        self.topics = topics
        self.group_id = group_id
        self._from_latest = from_latest
        self._positions: dict[tuple[str, int], int] = {}
        self._generation = -1
        self._started = False
        self._processing = asyncio.Lock()

    def processing(self) -> asyncio.Lock:
        return self._processing

    async def start(self) -> None:
        for topic in self.topics:
            self._bus._topic(topic)
        self._bus._join(self)
        self._started = True
        self._sync_assignment()

    async def stop(self) -> None:
        if self._started:
            self._bus._leave(self)
            self._started = False

    def _initial_position(self, partition: tuple[str, int]) -> int:
        if self.group_id is not None:
            committed = self._bus._committed(self.group_id, partition)
            if committed is not None:
                return committed
        if self._from_latest:
            topic, index = partition
            return len(self._bus._topic(topic).partitions[index])
        return 0

    def _sync_assignment(self) -> None:
        generation = self._bus._groups[self.group_id].generation if self.group_id is not None else 0
        if generation == self._generation and self._positions:
            return
        self._generation = generation
        # After a rebalance, resume from the group's committed offsets like Kafka does.
        self._positions = {
            partition: self._initial_position(partition)
            for partition in self._bus._assignment(self)
        }

    def _take(self, max_records: int) -> list[BusRecord]:
        self._sync_assignment()
        batch: list[BusRecord] = []
        for (topic, index), position in self._positions.items():
            log = self._bus._topic(topic).partitions[index]
            taken = log[position : position + max_records - len(batch)]
            batch.extend(taken)
            self._positions[(topic, index)] = position + len(taken)
            if len(batch) >= max_records:
                break
        return batch

    async def fetch(self, *, max_records: int, timeout_ms: int) -> list[BusRecord]:
        condition = self._bus._changed
        async with condition:
            batch = self._take(max_records)
            if batch:
                return batch
            try:
                await asyncio.wait_for(
                    condition.wait_for(lambda: bool(self._peek())), timeout_ms / 1000
                )
            except TimeoutError:
                return []
            return self._take(max_records)

    def _peek(self) -> bool:
        self._sync_assignment()
        return any(
            len(self._bus._topic(topic).partitions[index]) > position
            for (topic, index), position in self._positions.items()
        )

    async def flush_commits(self) -> None:
        """Nothing is deferred: ``commit`` commits at once."""

    async def commit(self, records: Sequence[BusRecord]) -> None:
        if self.group_id is None or not records:
            return
        offsets = {tp: offset + 1 for tp, offset in last_offsets_by_partition(records).items()}
        self._bus._commit(self.group_id, offsets)
