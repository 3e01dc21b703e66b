"""A client that stops reading is cut off with 4008 instead of growing the server's memory."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.websockets import WebSocketState

from shared.websocket import CLOSE_SLOW_CONSUMER, BoundedSender


class StalledClient:
    """A peer whose socket never drains: every send blocks."""

    def __init__(self) -> None:
        self.application_state = WebSocketState.CONNECTED
        self.sent: list[str] = []
        self.closed_with: tuple[int, str] | None = None
        self._never = asyncio.Event()

    async def send_text(self, text: str) -> None:
        self.sent.append(text)
        await self._never.wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)
        self.application_state = WebSocketState.DISCONNECTED


async def test_a_stalled_client_is_closed_with_4008_once_its_queue_is_full() -> None:
    client = StalledClient()
    sender = BoundedSender(client, max_queued=3, service="test")  # type: ignore[arg-type]
    sender.start()
    await asyncio.sleep(0)

    first = sender.offer({"n": 0})
    await asyncio.sleep(0.01)  # the writer takes it and blocks on the stalled socket
    accepted = [sender.offer({"n": i}) for i in range(1, 10)]
    await asyncio.sleep(0.01)

    # One frame is stuck in the socket, three wait in the queue, the next overflows.
    assert first is True
    assert client.sent == ['{"n":0}']
    assert accepted[:3] == [True] * 3
    assert accepted[3:] == [False] * 6
    assert sender.closed.is_set()
    assert client.closed_with is not None
    assert client.closed_with[0] == CLOSE_SLOW_CONSUMER
    await sender.close(1000, "test over")


async def test_a_reading_client_gets_every_frame_in_order() -> None:
    received: list[Any] = []

    class ReadingClient(StalledClient):
        async def send_text(self, text: str) -> None:
            received.append(text)

    client = ReadingClient()
    sender = BoundedSender(client, max_queued=3, service="test")  # type: ignore[arg-type]
    sender.start()
    for i in range(50):
        assert sender.offer({"n": i})
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)

    assert received == [f'{{"n":{i}}}' for i in range(50)]
    assert not sender.closed.is_set()
    await sender.close(1000, "test over")
