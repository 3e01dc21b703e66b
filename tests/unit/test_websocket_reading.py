"""wait_until_disconnected reads client frames in the caller's task and stops when the
client leaves or the sender closes, without swallowing anyone else's cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.websockets import WebSocketState

from shared.websocket import CLOSE_SLOW_CONSUMER, BoundedSender, wait_until_disconnected


class ScriptedClient:
    """A peer that sends the given messages, then nothing until ``leave()``; its socket
    never drains, so every frame the server sends stays stuck."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.application_state = WebSocketState.CONNECTED
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for message in messages:
            self.incoming.put_nowait(message)
        self.sent: list[str] = []
        self.closed_with: tuple[int, str] | None = None

    def leave(self) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send_text(self, text: str) -> None:
        self.sent.append(text)
        await asyncio.Event().wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)
        self.application_state = WebSocketState.DISCONNECTED


def sender_for(client: ScriptedClient, max_queued: int = 2) -> BoundedSender:
    sender = BoundedSender(client, max_queued=max_queued, service="test")  # type: ignore[arg-type]
    sender.start()
    return sender


async def test_frames_are_handled_until_the_client_leaves() -> None:
    client = ScriptedClient(
        {"type": "websocket.receive", "text": '{"type": "ping"}'},
        {"type": "websocket.receive", "text": '{"type": "subscribe", "conversation_id": "c"}'},
        {"type": "websocket.receive", "text": "not json"},
    )
    sender = sender_for(client, max_queued=10)
    handled: list[dict[str, Any]] = []

    async def on_frame(frame: dict[str, Any]) -> None:
        handled.append(frame)
        client.leave()

    await asyncio.wait_for(wait_until_disconnected(client, sender, on_frame=on_frame), 10)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert handled == [{"type": "subscribe", "conversation_id": "c"}]
    assert client.sent == ['{"type":"pong"}']
    await sender.close(1000, "bye")


async def test_reading_stops_when_the_sender_drops_a_slow_client() -> None:
    client = ScriptedClient()  # sends nothing, reads nothing
    sender = sender_for(client)

    async def socket_handler() -> int:
        await wait_until_disconnected(client, sender)  # type: ignore[arg-type]
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()  # the interruption is not left pending on the task

    reading = asyncio.create_task(socket_handler())
    await asyncio.sleep(0.01)
    assert not reading.done()
    for i in range(5):  # one stuck in the socket, two queued, then the queue overflows
        sender.offer({"n": i})
        await asyncio.sleep(0)
    assert await asyncio.wait_for(reading, 10) == 0
    await asyncio.wait_for(sender.close(1000, "bye"), 10)  # finishes the 4008 under way
    assert client.closed_with is not None
    assert client.closed_with[0] == CLOSE_SLOW_CONSUMER


async def test_the_task_stays_usable_after_reading_ends() -> None:
    client = ScriptedClient({"type": "websocket.disconnect", "code": 1000})
    sender = sender_for(client)

    async def socket_handler() -> str:
        await wait_until_disconnected(client, sender)  # type: ignore[arg-type]
        await asyncio.sleep(0.01)  # the reader's helpers wind down here
        sender.closed.set()  # the sender closes after the read ended
        await asyncio.sleep(0.05)  # a late interruption would land here
        return "finished"

    assert await asyncio.wait_for(socket_handler(), 10) == "finished"
    await sender.close(1000, "bye")


async def test_a_cancellation_from_elsewhere_still_cancels() -> None:
    client = ScriptedClient()
    sender = sender_for(client)
    reading = asyncio.create_task(wait_until_disconnected(client, sender))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert not sender.closed.is_set()
    await sender.close(1000, "bye")


async def test_a_cancellation_from_elsewhere_wins_over_a_closing_sender() -> None:
    client = ScriptedClient()
    sender = sender_for(client)
    reading = asyncio.create_task(wait_until_disconnected(client, sender))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    sender.closed.set()  # the sender closes (an interruption is due) ...
    reading.cancel()  # ... and someone else cancels too
    with pytest.raises(asyncio.CancelledError):
        await reading
    await sender.close(1000, "bye")
