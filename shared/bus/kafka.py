"""Apache Kafka implementation of the bus port (aiokafka).

Producer: acks=all with idempotence, so ``publish`` returning means the record is on
every in-sync replica. Consumers: auto-commit off; the caller commits after its DB
transaction; a rebalance listener waits for the batch in progress and commits what
finished before partitions are handed to another consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    TopicAlreadyExistsError,
    UnknownProducerId,
    for_code,
)
from aiokafka.structs import OffsetAndMetadata

from shared.bus.port import BusRecord, OutgoingRecord, last_offsets_by_partition
from shared.metrics import ASSIGNED_PARTITIONS, CONSUMER_LAG
from shared.tracing import publish_span

log = structlog.get_logger(__name__)

REVOKE_WAIT_SECONDS = 30.0
TOPIC_METADATA_WAIT_SECONDS = 15.0
GATHER_BYTES = 256 * 1024  # a gathering consumer's fetch waits for this much or its time
COMMIT_INTERVAL_SECONDS = 0.5  # offsets of finished batches are committed together within this


class KafkaBus:
    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "omniroute",
        partitions: int = 6,
        replication_factor: int = 1,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._producer: AIOKafkaProducer | None = None
        self._replace_lock = asyncio.Lock()
        self._replace_failed = False

    @property
    def partitions(self) -> int:
        """Partitions of the topics ``ensure_topics`` creates."""
        return self._partitions

    @property
    def replication_factor(self) -> int:
        """Replicas of each partition of the topics ``ensure_topics`` creates."""
        return self._replication_factor

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            # No added wait before sending: while one request is in flight to the broker
            # the records that follow batch up by themselves.
            linger_ms=0,
            request_timeout_ms=15_000,
        )
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def healthy(self) -> bool:
        producer = self._producer
        if producer is None or producer_failed_for_good(producer):
            return False
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout=3)
        except Exception:  # any failure to reach the cluster means not ready
            return False
        return True

    async def ensure_topics(self, names: Sequence[str]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, client_id=self._client_id)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [n for n in names if n not in existing]
            if missing:
                response = await admin.create_topics(
                    [NewTopic(n, self._partitions, self._replication_factor) for n in missing]
                )
                refused_topics(response.topic_errors)
        finally:
            await admin.close()

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaBus.start() was not called")
        return self._producer

    async def publish(self, record: OutgoingRecord) -> None:
        await self.publish_many([record])

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> None:
        if self._producer is None and self._replace_failed:
            await self._start_replacement()
        producer = self._require_producer()
        try:
            with publish_span(records, system="kafka") as traced:
                # send() only enqueues (keeping order per partition); waiting on every
                # future afterwards lets the batch share round trips while still
                # confirming each ack.
                futures = [
                    await producer.send(r.topic, value=r.value, key=r.key, headers=list(r.headers))
                    for r in traced
                ]
                await asyncio.gather(*futures)
        except Exception as exc:
            if producer_failed_for_good(producer) or isinstance(exc, PRODUCER_STATE_ERRORS):
                await self._replace(producer)
            raise

    async def _replace(self, failed: AIOKafkaProducer) -> None:
        """A producer whose sender died, or whose sequence state the broker no longer
        knows (OutOfOrderSequenceNumber after a broker restart), fails every later send:
        stop it and start a new one. The caller's
        records are refused (the client retries); the next publish uses the new one."""
        async with self._replace_lock:
            if id(self._producer) != id(failed):
                return  # another publish replaced it already
            log.warning("Kafka producer failed for good; starting a new one")
            self._producer = None
            self._replace_failed = True
            with contextlib.suppress(Exception):  # its pending batches are lost anyway
                await asyncio.wait_for(failed.stop(), timeout=5)
        await self._start_replacement()

    async def _start_replacement(self) -> None:
        async with self._replace_lock:
            if self._producer is None:
                await self.start()
                self._replace_failed = False

    def consumer(
        self,
        topics: Sequence[str],
        *,
        group_id: str | None,
        from_latest: bool = False,
        gather_ms: int = 0,
    ) -> KafkaConsumerSource:
        return KafkaConsumerSource(
            self._bootstrap,
            list(topics),
            group_id=group_id,
            client_id=self._client_id,
            from_latest=from_latest,
            gather_ms=gather_ms,
        )


def refused_topics(topic_errors: Sequence[tuple[Any, ...]]) -> None:
    """Raise for topics the broker refused to create. The broker answers CreateTopics
    with an error per topic, not a failed request, and aiokafka returns that answer as
    is: a refusal (say, a replication factor above the number of brokers) would pass
    silently and the services would run without their topics. A topic that exists
    already (created concurrently by another process) is fine."""
    refused = [
        f"{topic}: {for_code(code).__name__} ({detail[0] if detail else 'no detail'})"
        for topic, code, *detail in topic_errors
        if code not in (0, TopicAlreadyExistsError.errno)
    ]
    if refused:
        raise RuntimeError("Kafka refused to create topics: " + "; ".join(refused))


# The idempotent producer's sequence state no longer matches the broker's (a broker
# restart lost it): every later batch fails the same way until a new producer (new
# producer id) is started.
PRODUCER_STATE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch)


def producer_failed_for_good(producer: AIOKafkaProducer) -> bool:
    """True when the producer's sender task ended: aiokafka then fails every send with
    the error that ended it, and has no public flag for it."""
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    return task is not None and task.done()


class _CommitFinishedOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaConsumerSource, group_id: str) -> None:
        self._source = source
        self._group_id = group_id

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:  # noqa: ARG002
        await self._source.commit_finished()
        self._source.forget_deliveries()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Resolve positions now (committed offset, or the reset policy for a new group),
        # so "assigned" means "reading from a fixed point" to anyone watching the gauge.
        await self._source.resolve_positions(assigned)
        ASSIGNED_PARTITIONS.labels(group=self._group_id).set(len(assigned))
        log.info(
            "partitions assigned", partitions=[f"{tp.topic}:{tp.partition}" for tp in assigned]
        )


class KafkaConsumerSource:
    def __init__(
        self,
        bootstrap_servers: str,
        topics: list[str],
        *,
        group_id: str | None,
        client_id: str,
        from_latest: bool,
        gather_ms: int = 0,
    ) -> None:
        self._topics = topics
        self._group_id = group_id
        self._from_latest = from_latest
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="latest" if from_latest else "earliest",
            isolation_level="read_committed",
            max_poll_interval_ms=300_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
            # The broker answers a fetch once it has fetch_min_bytes or waited
            # fetch_max_wait_ms: with gathering, up to GATHER_BYTES or gather_ms.
            fetch_min_bytes=GATHER_BYTES if gather_ms > 0 else 1,
            fetch_max_wait_ms=gather_ms if gather_ms > 0 else 500,
        )
        # Offsets of records whose processing finished but are not yet committed.
        self._finished: dict[tuple[str, int], int] = {}
        self._processing = asyncio.Lock()
        # Partitions that handed out records since they were assigned, and a lock that
        # keeps commits and the pinning of new partitions from overtaking each other.
        self._delivered: set[tuple[str, int]] = set()
        self._commit_lock = asyncio.Lock()
        self._last_commit = float("-inf")

    async def start(self) -> None:
        await self._consumer.start()
        if self._group_id is None:
            partitions = await self._all_partitions()
            self._consumer.assign(partitions)
            if self._from_latest:
                # Resolve positions now, so nothing published after start() is skipped.
                await self._consumer.seek_to_end(*partitions)
            for partition in partitions:
                await self._consumer.position(partition)
        else:
            self._consumer.subscribe(
                self._topics, listener=_CommitFinishedOnRevoke(self, self._group_id)
            )

    async def resolve_positions(self, partitions: list[TopicPartition]) -> None:
        """Resolve positions of newly assigned partitions and pin new ones.

        A partition the group never committed starts where the reset policy puts it. That
        start is committed at once: otherwise, if the partition moved before anything was
        committed, the next owner would reset again, and "latest" would skip every record
        that arrived in between.
        """
        starts = {partition: await self._consumer.position(partition) for partition in partitions}
        if self._group_id is None:
            return
        async with self._commit_lock:
            unpinned = {
                partition: OffsetAndMetadata(start, "")
                for partition, start in starts.items()
                # A partition that already handed out records is pinned by their commit
                # (its position may be past records still being processed).
                if (partition.topic, partition.partition) not in self._delivered
                and await self._consumer.committed(partition) is None
            }
            if not unpinned:
                return
            try:
                await self._consumer.commit(unpinned)
            except KafkaError as exc:
                log.warning("could not pin the start of new partitions", error=str(exc))

    def forget_deliveries(self) -> None:
        """Partitions were revoked (all of them: aiokafka rebalances eagerly)."""
        self._delivered.clear()

    async def _all_partitions(self) -> list[TopicPartition]:
        """Every partition of the topics, waiting briefly for just-created topics."""
        deadline = asyncio.get_running_loop().time() + TOPIC_METADATA_WAIT_SECONDS
        while True:
            cluster = await self._consumer._client.fetch_all_metadata()
            known = {topic: cluster.partitions_for_topic(topic) for topic in self._topics}
            if all(known.values()):
                return [
                    TopicPartition(topic, partition)
                    for topic, partitions in known.items()
                    for partition in sorted(partitions or ())
                ]
            if asyncio.get_running_loop().time() > deadline:
                missing = [topic for topic, partitions in known.items() if not partitions]
                raise RuntimeError(f"topics {missing} do not exist; create them first")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        await self.commit_finished()
        await self._consumer.stop()

    async def fetch(self, *, max_records: int, timeout_ms: int) -> list[BusRecord]:
        by_partition = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        self._delivered.update((tp.topic, tp.partition) for tp in by_partition)  # before any await
        if self._group_id is not None:
            await self._record_lag()
        return [
            BusRecord(
                topic=m.topic,
                partition=m.partition,
                offset=m.offset,
                key=m.key,
                value=m.value if m.value is not None else b"",
                headers=tuple(m.headers or ()),
            )
            for messages in by_partition.values()
            for m in messages
        ]

    async def _record_lag(self) -> None:
        """Consumer lag per topic: high watermark minus position on assigned partitions."""
        lag: dict[str, int] = {}
        for partition in self._consumer.assignment():
            highwater = self._consumer.highwater(partition)
            if highwater is None:
                continue
            position = await self._consumer.position(partition)
            lag[partition.topic] = lag.get(partition.topic, 0) + max(0, highwater - position)
        for topic, records in lag.items():
            CONSUMER_LAG.labels(group=self._group_id, topic=topic).set(records)

    def processing(self) -> asyncio.Lock:
        """Held by the consumer loop from fetch to commit of one batch."""
        return self._processing

    async def commit(self, records: Sequence[BusRecord]) -> None:
        """Note ``records`` as finished; commit what finished at most every
        ``COMMIT_INTERVAL_SECONDS`` (an offset commit is a broker write per group: one
        per small batch cost the broker more CPU than the records themselves). What is
        noted but not yet committed is committed by ``flush_commits`` when the consumer
        goes idle, on a rebalance and on stop; a crash redelivers it to idempotent
        consumers."""
        if self._group_id is None or not records:
            return
        for partition, offset in last_offsets_by_partition(records).items():
            self._finished[partition] = max(self._finished.get(partition, 0), offset + 1)
        if asyncio.get_running_loop().time() - self._last_commit >= COMMIT_INTERVAL_SECONDS:
            await self._commit_finished()

    async def flush_commits(self) -> None:
        await self._commit_finished()

    async def commit_finished(self) -> None:
        """Rebalance and shutdown path: wait for the batch in progress, commit what finished."""
        if self._group_id is None:
            return
        try:
            await asyncio.wait_for(self._processing.acquire(), timeout=REVOKE_WAIT_SECONDS)
        except TimeoutError:
            log.warning("batch still in progress at rebalance; its records will be redelivered")
            return
        try:
            await self._commit_finished()
        finally:
            self._processing.release()

    async def _commit_finished(self) -> None:
        if not self._finished:
            return
        self._last_commit = asyncio.get_running_loop().time()
        assigned = self._consumer.assignment()
        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "")
            for (topic, partition), offset in self._finished.items()
            if TopicPartition(topic, partition) in assigned
        }
        self._finished.clear()
        if not offsets:
            return
        try:
            async with self._commit_lock:
                await self._consumer.commit(offsets)
        except KafkaError as exc:
            # Lost the partitions meanwhile: the next owner re-reads these records and the
            # idempotent consumer absorbs them.
            log.warning("offset commit failed; records will be redelivered", error=str(exc))
