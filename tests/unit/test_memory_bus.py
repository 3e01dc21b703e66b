"""The in-process bus keeps the Kafka semantics services rely on."""

from __future__ import annotations

import pytest

from shared.bus.memory import MemoryBus
from shared.bus.port import BusRecord, OutgoingRecord


def record(key: str, value: str, topic: str = "t") -> OutgoingRecord:
    return OutgoingRecord(topic=topic, key=key.encode(), value=value.encode())


async def drain(consumer: object, rounds: int = 3) -> list[BusRecord]:
    out: list[BusRecord] = []
    for _ in range(rounds):
        out.extend(await consumer.fetch(max_records=100, timeout_ms=10))  # type: ignore[attr-defined]
    return out


async def test_records_with_one_key_stay_in_order_on_one_partition(memory_bus: MemoryBus) -> None:
    await memory_bus.publish_many([record("a", str(i)) for i in range(20)])
    await memory_bus.publish_many([record("b", str(i)) for i in range(20)])
    consumer = memory_bus.consumer(["t"], group_id="g")
    await consumer.start()

    got = await drain(consumer)

    for key in (b"a", b"b"):
        values = [int(r.value) for r in got if r.key == key]
        assert values == list(range(20))
        assert len({r.partition for r in got if r.key == key}) == 1


async def test_a_group_shares_partitions_and_each_record_goes_to_one_member(
    memory_bus: MemoryBus,
) -> None:
    first = memory_bus.consumer(["t"], group_id="g")
    second = memory_bus.consumer(["t"], group_id="g")
    await first.start()
    await second.start()
    await memory_bus.publish_many([record(f"k{i}", str(i)) for i in range(60)])

    got_first = await drain(first)
    got_second = await drain(second)

    assert got_first
    assert got_second
    assert sorted(int(r.value) for r in got_first + got_second) == list(range(60))
    assert not {r.partition for r in got_first} & {r.partition for r in got_second}


async def test_another_group_reads_everything_again(memory_bus: MemoryBus) -> None:
    await memory_bus.publish_many([record(f"k{i}", str(i)) for i in range(10)])
    one = memory_bus.consumer(["t"], group_id="one")
    two = memory_bus.consumer(["t"], group_id="two")
    await one.start()
    await two.start()

    assert len(await drain(one)) == 10
    assert len(await drain(two)) == 10


async def test_a_restarted_member_resumes_after_the_committed_offset_only(
    memory_bus: MemoryBus,
) -> None:
    await memory_bus.publish_many([record("k", str(i)) for i in range(10)])
    consumer = memory_bus.consumer(["t"], group_id="g")
    await consumer.start()
    batch = await consumer.fetch(max_records=4, timeout_ms=10)
    await consumer.commit(batch)
    await consumer.fetch(max_records=100, timeout_ms=10)  # read but never committed
    await consumer.stop()

    restarted = memory_bus.consumer(["t"], group_id="g")
    await restarted.start()
    again = await drain(restarted)

    assert [int(r.value) for r in again] == list(range(4, 10))


async def test_a_groupless_consumer_from_latest_sees_only_new_records(
    memory_bus: MemoryBus,
) -> None:
    await memory_bus.publish(record("k", "old"))
    consumer = memory_bus.consumer(["t"], group_id=None, from_latest=True)
    await consumer.start()
    await memory_bus.publish(record("k", "new"))

    assert [r.value for r in await drain(consumer)] == [b"new"]


@pytest.mark.parametrize("partitions", [1, 3, 7])
async def test_fetch_waits_for_new_records(partitions: int) -> None:
    bus = MemoryBus(partitions=partitions)
    consumer = bus.consumer(["t"], group_id="g")
    await consumer.start()
    assert await consumer.fetch(max_records=10, timeout_ms=10) == []
    await bus.publish(record("k", "v"))
    assert [r.value for r in await consumer.fetch(max_records=10, timeout_ms=100)] == [b"v"]
