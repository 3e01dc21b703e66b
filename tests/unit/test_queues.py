"""SingleConsumerQueue: asyncio.Queue's put_nowait/get for one consumer, bounded."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from shared.queues import SingleConsumerQueue


async def test_items_come_out_in_the_order_they_went_in() -> None:
    queue: SingleConsumerQueue[int] = SingleConsumerQueue()
    for i in range(100):
        queue.put_nowait(i)
    assert queue.qsize() == 100
    assert [await queue.get() for _ in range(100)] == list(range(100))
    assert queue.empty()


async def test_a_full_queue_refuses_with_queue_full() -> None:
    queue: SingleConsumerQueue[str] = SingleConsumerQueue(2)
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert queue.full()
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait("c")
    assert queue.get_nowait() == "a"
    queue.put_nowait("c")
    assert [queue.get_nowait(), queue.get_nowait()] == ["b", "c"]
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_get_waits_until_an_item_is_put() -> None:
    queue: SingleConsumerQueue[str] = SingleConsumerQueue(1)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait("x")
    assert await getter == "x"
    assert queue.empty()


async def test_a_get_cancelled_after_its_wake_up_loses_no_item() -> None:
    queue: SingleConsumerQueue[str] = SingleConsumerQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("kept")  # wakes the getter ...
    getter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await getter
    assert await queue.get() == "kept"


async def test_a_second_waiting_consumer_is_refused() -> None:
    queue: SingleConsumerQueue[int] = SingleConsumerQueue()
    first = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="two tasks"):
        await queue.get()
    queue.put_nowait(1)
    assert await first == 1


def test_an_empty_queue_costs_a_fraction_of_an_asyncio_queue() -> None:
    def allocated(make: type[object], count: int = 1000) -> int:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = [make() for _ in range(count)]
            size: int = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(kept) == count
        return size

    assert allocated(SingleConsumerQueue) * 10 < allocated(asyncio.Queue)
