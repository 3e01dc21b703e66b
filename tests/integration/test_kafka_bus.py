"""The aiokafka bus and the consumer loop keep the port's semantics on a real broker.

Every test creates its own topics and groups (uuid suffix), so tests never see each
other's records. Waits are short polling loops bounded by a deadline, never sleeps:
a missing record fails the test with what was seen instead of hanging.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.bus.consumer import ConsumerLoop, PoisonRecordError
from shared.bus.kafka import KafkaBus, KafkaConsumerSource
from shared.bus.port import BusRecord, OutgoingRecord, last_offsets_by_partition

pytestmark = pytest.mark.integration

PARTITIONS = 3
DEADLINE_SECONDS = 20.0


def unique(name: str) -> str:
    return f"it-{name}-{uuid.uuid4().hex[:12]}"


def record(topic: str, key: str, value: str) -> OutgoingRecord:
    return OutgoingRecord(topic=topic, key=key.encode(), value=value.encode())


@pytest.fixture
async def bus(kafka_bootstrap: str) -> AsyncIterator[KafkaBus]:
    kafka_bus = KafkaBus(kafka_bootstrap, client_id="omniroute-it", partitions=PARTITIONS)
    await kafka_bus.start()
    yield kafka_bus
    await kafka_bus.stop()


@pytest.fixture
async def topics(kafka_bootstrap: str, bus: KafkaBus) -> AsyncIterator[Callable[[str], str]]:
    """Makes unique topic names (create them with ``bus.ensure_topics``); deletes them
    and their dead-letter topics afterwards."""
    created: list[str] = []

    def make(name: str) -> str:
        created.append(unique(name))
        return created[-1]

    yield make
    if created:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            await admin.delete_topics(
                [t for name in created for t in (name, f"{name}.dlq") if t in existing]
            )
        finally:
            await admin.close()


@asynccontextmanager
async def started(source: KafkaConsumerSource) -> AsyncIterator[KafkaConsumerSource]:
    await source.start()
    try:
        yield source
    finally:
        await source.stop()


async def collect(
    source: KafkaConsumerSource,
    done: Callable[[list[BusRecord]], bool],
    *,
    max_records: int = 500,
) -> list[BusRecord]:
    """Fetch (without committing) until ``done(records so far)``; fail after the deadline.

    No ``processing()`` lock here: a fetch can block for a whole rebalance, and the
    revoke listener waits for that lock (ConsumerLoop too takes it only after fetch).
    """
    got: list[BusRecord] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not done(got):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {DEADLINE_SECONDS} s with {len(got)} records: {got}")
        got.extend(await source.fetch(max_records=max_records, timeout_ms=200))
    return got


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The broker's log-end offset per partition (a groupless probe, no group join)."""
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        ends = await probe.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        await probe.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


def values(records: Sequence[BusRecord]) -> list[str]:
    return [r.value.decode() for r in records]


def assigned(source: KafkaConsumerSource) -> set[int]:
    return {tp.partition for tp in source._consumer.assignment()}


async def test_healthy_only_while_started(kafka_bootstrap: str, bus: KafkaBus) -> None:
    assert await bus.healthy()

    stopped = KafkaBus(kafka_bootstrap)
    assert not await stopped.healthy()


async def test_publish_is_acknowledged_and_a_key_keeps_its_order_on_one_partition(
    kafka_bootstrap: str, bus: KafkaBus, topics: Callable[[str], str]
) -> None:
    topic = topics("order")
    await bus.ensure_topics([topic])
    keys = [f"conversation-{i}" for i in range(6)]
    await bus.publish(record(topic, "single", "single-0"))
    await bus.publish_many([record(topic, k, f"{k}-{n}") for n in range(15) for k in keys])
    total = 1 + 15 * len(keys)

    # Both calls returned only after the broker acknowledged: everything is on the log.
    assert sum((await end_offsets(kafka_bootstrap, topic)).values()) == total

    consumer = bus.consumer([topic], group_id=unique("group"))
    async with started(consumer):
        got = await collect(consumer, lambda got: len(got) >= total)

    assert len(got) == total
    assert Counter(values(got)) == Counter(
        ["single-0", *(f"{k}-{n}" for n in range(15) for k in keys)]
    )
    for key in keys:
        mine = [r for r in got if r.key == key.encode()]
        assert values(mine) == [f"{key}-{n}" for n in range(15)]
        assert len({r.partition for r in mine}) == 1
        offsets = [r.offset for r in mine]
        assert offsets == sorted(offsets)
    assert len({r.partition for r in got}) > 1, "keys should spread over the partitions"


async def test_only_uncommitted_records_are_redelivered_to_the_group(
    bus: KafkaBus, topics: Callable[[str], str]
) -> None:
    topic = topics("commit")
    group = unique("group")
    await bus.ensure_topics([topic])
    await bus.publish_many([record(topic, f"k{i % 7}", f"v{i}") for i in range(40)])

    first = bus.consumer([topic], group_id=group)
    async with started(first):
        committed = await collect(first, lambda got: len(got) > 0, max_records=5)
        assert len(committed) <= 5
        await first.commit(committed)
        rest = await collect(first, lambda got: len(committed) + len(got) >= 40)
    seen = committed + rest
    assert Counter(values(seen)) == Counter(f"v{i}" for i in range(40))

    # The commit covers, per partition, everything up to its last record in the batch.
    committed_upto = last_offsets_by_partition(committed)
    expected = sorted(
        (r.partition, r.offset)
        for r in seen
        if r.offset > committed_upto.get((r.topic, r.partition), -1)
    )
    assert len(expected) == 40 - len(committed)
    # Each partition is read in order, so once the last record of every partition with
    # uncommitted records arrived, a wrongly redelivered committed one would have too.
    ends = {
        (partition, end)
        for (_, partition), end in last_offsets_by_partition(seen).items()
        if end > committed_upto.get((topic, partition), -1)
    }

    def reached_the_end(got: list[BusRecord]) -> bool:
        return ends <= {(r.partition, r.offset) for r in got}

    again = bus.consumer([topic], group_id=group)
    async with started(again):
        redelivered = await collect(again, reached_the_end)

    assert sorted((r.partition, r.offset) for r in redelivered) == expected


async def group_offsets(source: KafkaConsumerSource, topic: str) -> dict[int, int]:
    """What the group has committed on the broker, per partition."""
    committed = {
        p: await source._consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)
    }
    return {p: offset for p, offset in committed.items() if offset is not None}


async def test_commits_of_quick_batches_are_gathered_and_flushed_when_idle(
    bus: KafkaBus, topics: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shared.bus.kafka.COMMIT_INTERVAL_SECONDS", 3600.0)
    topic = topics("gathered")
    await bus.ensure_topics([topic])
    await bus.publish_many([record(topic, f"k{i % 5}", f"v{i}") for i in range(30)])
    source = bus.consumer([topic], group_id=unique("group"))
    async with started(source):
        first = await collect(source, lambda got: len(got) > 0, max_records=5)
        await source.commit(first)  # the first commit goes out at once
        # (A new group's partitions are pinned at their start, 0, when assigned.)
        after_first = dict.fromkeys(range(PARTITIONS), 0) | {
            p: o + 1 for (_, p), o in last_offsets_by_partition(first).items()
        }
        assert await group_offsets(source, topic) == after_first

        rest = await collect(source, lambda got: len(first) + len(got) >= 30)
        await source.commit(rest)  # within the interval: noted, not yet on the broker
        assert await group_offsets(source, topic) == after_first

        await source.flush_commits()
        ends = await end_offsets(bus._bootstrap, topic)
        assert await group_offsets(source, topic) == ends


async def test_two_members_of_a_group_split_the_partitions(
    bus: KafkaBus, topics: Callable[[str], str]
) -> None:
    topic = topics("split")
    group = unique("group")
    await bus.ensure_topics([topic])
    one = bus.consumer([topic], group_id=group)
    two = bus.consumer([topic], group_id=group)
    async with started(one), started(two):
        # Wait until the group settled: disjoint, non-empty, covering every partition.
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not (
            assigned(one)
            and assigned(two)
            and not assigned(one) & assigned(two)
            and assigned(one) | assigned(two) == set(range(PARTITIONS))
        ):
            if time.monotonic() > deadline:
                pytest.fail(f"group never settled: {assigned(one)} / {assigned(two)}")
            await asyncio.gather(
                one.fetch(max_records=10, timeout_ms=100), two.fetch(max_records=10, timeout_ms=100)
            )

        await bus.publish_many([record(topic, f"k{i}", f"v{i}") for i in range(60)])
        got_one: list[BusRecord] = []
        got_two: list[BusRecord] = []
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(got_one) + len(got_two) < 60:
            if time.monotonic() > deadline:
                pytest.fail(f"only {len(got_one)} + {len(got_two)} of 60 records arrived")
            batch_one, batch_two = await asyncio.gather(
                one.fetch(max_records=100, timeout_ms=200),
                two.fetch(max_records=100, timeout_ms=200),
            )
            got_one += batch_one
            got_two += batch_two

    assert got_one
    assert got_two
    assert sorted(values(got_one + got_two), key=lambda v: int(v[1:])) == [
        f"v{i}" for i in range(60)
    ]
    assert not {r.partition for r in got_one} & {r.partition for r in got_two}


async def test_a_groupless_consumer_from_latest_sees_only_new_records(
    bus: KafkaBus, topics: Callable[[str], str]
) -> None:
    topic = topics("latest")
    await bus.ensure_topics([topic])
    await bus.publish_many([record(topic, f"k{i}", f"old{i}") for i in range(12)])

    consumer = bus.consumer([topic], group_id=None, from_latest=True)
    async with started(consumer):
        await bus.publish_many([record(topic, f"k{i}", f"new{i}") for i in range(12)])
        # Old records precede new ones on each partition, so they would arrive first.
        got = await collect(
            consumer, lambda got: sum(v.startswith("new") for v in values(got)) >= 12
        )

    assert sorted(values(got)) == sorted(f"new{i}" for i in range(12))
    assert {r.partition for r in got} == set(range(PARTITIONS)), "new records on every partition"


async def test_consumer_loop_dead_letters_a_poison_record_and_commits_everything(
    bus: KafkaBus, topics: Callable[[str], str]
) -> None:
    topic = topics("loop")
    dlq = f"{topic}.dlq"
    group = unique("group")
    await bus.ensure_topics([topic, dlq])
    await bus.publish_many([record(topic, f"k{i % 5}", f"v{i}") for i in range(30)])

    handled: list[str] = []
    poison: list[BusRecord] = []

    async def handler(records: Sequence[BusRecord]) -> None:
        # All or nothing, like a DB transaction: a failing batch leaves no trace.
        for r in records:
            if r.value == b"v13":
                poison.append(r)
                raise PoisonRecordError("cannot parse v13")
        handled.extend(values(records))

    loop = ConsumerLoop(
        name="it-loop",
        source=bus.consumer([topic], group_id=group),
        handler=handler,
        bus=bus,
        retry_backoff_seconds=0.01,
    )
    dlq_reader = bus.consumer([dlq], group_id=None)
    task = asyncio.create_task(loop.run())
    try:
        async with started(dlq_reader):
            dead = await collect(dlq_reader, lambda got: len(got) >= 1)
            deadline = time.monotonic() + DEADLINE_SECONDS
            while len(handled) < 29 and time.monotonic() < deadline and not task.done():
                await asyncio.wait({task}, timeout=0.1)
    finally:
        loop.request_stop()
        await asyncio.wait_for(task, timeout=DEADLINE_SECONDS)

    assert sorted(handled) == sorted(f"v{i}" for i in range(30) if i != 13)
    assert len(dead) == 1
    assert dead[0].value == b"v13"
    assert dead[0].key == b"k3"
    error = dead[0].header("omni_dlq_error")
    assert error is not None
    assert b"PoisonRecordError" in error
    assert b"cannot parse v13" in error
    assert dead[0].header("omni_dlq_topic") == topic.encode()
    # Once in the failing batch, once alone; a poison record is never retried.
    assert len(poison) == 2
    assert dead[0].header("omni_dlq_offset") == str(poison[0].offset).encode()
    assert dead[0].header("omni_dlq_partition") == str(poison[0].partition).encode()

    # Everything was committed: a fresh member reads only records published from now.
    await bus.publish_many([record(topic, f"k{i}", f"after{i}") for i in range(12)])
    fresh = bus.consumer([topic], group_id=group)
    async with started(fresh):
        got = await collect(
            fresh, lambda got: sum(v.startswith("after") for v in values(got)) >= 12
        )
    assert sorted(values(got)) == sorted(f"after{i}" for i in range(12))
    assert {r.partition for r in got} == set(range(PARTITIONS)), "new records on every partition"


async def test_a_producer_that_failed_for_good_is_replaced(
    bus: KafkaBus, topics: Callable[[str], str]
) -> None:
    """After a broker restart aiokafka's idempotent producer can die of
    OutOfOrderSequenceNumber and fail every later send; the bus starts a new one."""
    from aiokafka.errors import OutOfOrderSequenceNumber

    topic = topics("replaced")
    await bus.ensure_topics([topic])
    sender = bus._producer._sender  # type: ignore[union-attr]
    sender.sender_task.cancel()
    await asyncio.gather(sender.sender_task, return_exceptions=True)

    async def broker_said_out_of_order() -> None:
        raise OutOfOrderSequenceNumber()

    sender._sender_task = asyncio.create_task(broker_said_out_of_order())
    sender._sender_task.add_done_callback(sender._fail_all)
    await asyncio.sleep(0.01)

    assert not await bus.healthy()
    with pytest.raises(OutOfOrderSequenceNumber):
        await bus.publish(record(topic, "k", "refused"))
    await bus.publish(record(topic, "k", "accepted"))
    assert await bus.healthy()


async def test_a_producer_whose_sequence_the_broker_lost_is_replaced(
    bus: KafkaBus, topics: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender lives on but every batch fails with OutOfOrderSequenceNumber (the
    broker restarted and lost the producer's sequence state)."""
    from aiokafka.errors import OutOfOrderSequenceNumber

    topic = topics("sequence")
    await bus.ensure_topics([topic])
    stale = bus._producer

    async def out_of_order(*args: object, **kwargs: object) -> None:
        raise OutOfOrderSequenceNumber()

    monkeypatch.setattr(stale, "send", out_of_order)

    with pytest.raises(OutOfOrderSequenceNumber):
        await bus.publish(record(topic, "k", "refused"))
    await bus.publish(record(topic, "k", "accepted"))
    assert bus._producer is not stale


async def describe_replication(bootstrap: str, topic: str) -> dict[int, int]:
    """Replicas per partition of ``topic``, as the broker reports them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert description["error_code"] == 0, description
    return {p["partition"]: len(p["replicas"]) for p in description["partitions"]}


async def test_topics_are_created_with_the_configured_replication_factor(
    kafka_bootstrap: str, topics: Callable[[str], str]
) -> None:
    topic = topics("replicated")
    creator = KafkaBus(kafka_bootstrap, partitions=2, replication_factor=1)

    await creator.ensure_topics([topic, f"{topic}.dlq"])

    assert await describe_replication(kafka_bootstrap, topic) == {0: 1, 1: 1}
    assert await describe_replication(kafka_bootstrap, f"{topic}.dlq") == {0: 1, 1: 1}


async def test_a_replication_factor_the_cluster_cannot_hold_fails_clearly(
    kafka_bootstrap: str, topics: Callable[[str], str]
) -> None:
    """The local cluster has one broker: replication factor 2 cannot be met. The broker
    answers such a request with a per-topic error, not a failed request: it must not
    pass silently (the services would start without their topics)."""
    topic = topics("overreplicated")
    creator = KafkaBus(kafka_bootstrap, replication_factor=2)

    with pytest.raises(RuntimeError, match=rf"{topic}.*replication factor") as refused:
        await creator.ensure_topics([topic])

    assert "InvalidReplicationFactor" in str(refused.value)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()


async def test_existing_topics_are_left_alone_whatever_the_replication_factor(
    kafka_bootstrap: str, topics: Callable[[str], str]
) -> None:
    topic = topics("existing")
    await KafkaBus(kafka_bootstrap, partitions=1).ensure_topics([topic])

    # Would fail on this one-broker cluster if it tried to create the topic again.
    await KafkaBus(kafka_bootstrap, partitions=3, replication_factor=2).ensure_topics([topic])

    assert await describe_replication(kafka_bootstrap, topic) == {0: 1}
