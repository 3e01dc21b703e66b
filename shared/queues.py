"""A FIFO for one consumer task, small enough to keep one per WebSocket.

``asyncio.Queue`` allocates three deques and an ``asyncio.Event`` (a fourth deque) up
front, about 3.3 KiB, whether or not anything is ever queued. A socket's send queue is
empty nearly all of its life, and an agent_api replica holds thousands of sockets, so
this queue holds no container while empty and wakes its one consumer through a single
future. It keeps ``asyncio.Queue``'s names and exceptions for the calls it has.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleConsumerQueue(Generic[T]):
    """``put_nowait`` from anywhere, ``get`` from one task at a time; ``maxsize`` <= 0
    means unbounded."""

    __slots__ = ("_items", "_maxsize", "_waiter")

    def __init__(self, maxsize: int = 0) -> None:
        self._maxsize = maxsize
        self._items: deque[T] | None = None  # None while empty
        self._waiter: asyncio.Future[None] | None = None

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def qsize(self) -> int:
        return len(self._items) if self._items is not None else 0

    def empty(self) -> bool:
        return self._items is None

    def full(self) -> bool:
        return 0 < self._maxsize <= self.qsize()

    def put_nowait(self, item: T) -> None:
        """Append ``item``; :class:`asyncio.QueueFull` when ``maxsize`` items wait."""
        if self.full():
            raise asyncio.QueueFull
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_nowait(self) -> T:
        """The oldest item; :class:`asyncio.QueueEmpty` when there is none."""
        if self._items is None:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    async def get(self) -> T:
        """The oldest item, waiting for one. Cancelling the wait loses nothing."""
        while self._items is None:
            if self._waiter is not None:
                raise RuntimeError("SingleConsumerQueue.get awaited by two tasks at once")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()
