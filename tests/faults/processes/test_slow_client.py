"""F7 against real processes (`make faults`): one supervisor WebSocket reads a frame a
second while three others read at full rate, during a burst through ingest, Kafka, the
router and agent_api. The agent_api process keeps bounded memory (its send queue per
socket is bounded, and so is the kernel's send buffer of the socket), closes the slow
socket with 4008 (its queue overflowed, or a frame waited too long for room in the
socket), and the fast sockets receive every frame of the stream without a gap."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from services.agent_api.realtime.hub import audience, conversation_of, frame_of
from shared.db.models import Conversation, OutboxEvent
from shared.db.session import Database
from shared.websocket import CLOSE_SLOW_CONSUMER
from tests.faults.processes.conftest import record
from tests.faults.processes.harness import (
    FaultInfra,
    Figures,
    Load,
    open_sessions,
    running_stack,
    send_messages,
    wait_stored,
)
from tests.faults.processes.test_scenarios import supervisor_token

pytestmark = pytest.mark.faults

SESSIONS = 100
BURST = 3000
FAST_CLIENTS = 3
SEND_QUEUE = 256  # agent_api's default ws_send_queue_size, set explicitly here
SEND_TIMEOUT = 10.0  # its default ws_send_timeout_seconds
SEND_BUFFER = 65536  # its default ws_send_buffer_bytes (SO_SNDBUF)
TEXT_BYTES = 2048  # per message: the stalled socket's backlog outgrows the kernel buffers


async def slow_clients_dropped(base_url: str) -> float:
    """agent_api's count of sockets it closed with 4008 (BoundedSender), from /metrics."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "omni_websocket_slow_clients_dropped_total":
                return sample.value
    return 0.0


def drop_reasons(log: Path) -> list[str]:
    """Why agent_api closed sockets with 4008, from its log (BoundedSender's warning)."""
    reasons = []
    for line in log.read_text(errors="replace").splitlines():
        if "websocket client too slow" in line:
            try:
                reasons.append(str(json.loads(line).get("why")))
            except ValueError:
                reasons.append(line)
    return reasons


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


async def stream_position(database_url: str, workspace_id: uuid.UUID) -> int:
    database = Database(database_url)
    try:
        async with database.sessions() as session:
            seq = await session.scalar(
                select(func.max(OutboxEvent.seq)).where(OutboxEvent.workspace_id == workspace_id)
            )
    finally:
        await database.dispose()
    return int(seq or 0)


async def expected_frames(
    database_url: str, workspace_id: uuid.UUID, after: int, followed: set[uuid.UUID]
) -> tuple[list[int], int]:
    """Seqs after ``after`` a supervisor following ``followed`` must receive, and the
    bytes of those frames (what a socket that stops reading would pile up)."""
    database = Database(database_url)
    try:
        async with database.sessions() as session:
            rows = (
                await session.scalars(
                    select(OutboxEvent)
                    .where(OutboxEvent.workspace_id == workspace_id, OutboxEvent.seq > after)
                    .order_by(OutboxEvent.seq)
                )
            ).all()
    finally:
        await database.dispose()
    from shared.outbox import event_of

    wanted, size = [], 0
    for row in rows:
        event = event_of(row)
        frame = frame_of(event)
        if frame is None:
            continue
        if audience(event).supervisors or conversation_of(event.data) in followed:
            wanted.append(int(row.seq or 0))
            size += len(json.dumps(frame, default=str))
    return wanted, size


async def follow_all(ws: ClientConnection, token: str, conversations: list[uuid.UUID]) -> None:
    """Authenticate, wait for ``ready``, subscribe to every conversation, wait for acks."""
    await ws.send(json.dumps({"type": "auth", "token": token}))
    while json.loads(await ws.recv()).get("type") != "ready":
        pass
    for conversation_id in conversations:
        await ws.send(json.dumps({"type": "subscribe", "conversation_id": str(conversation_id)}))
    acked = 0
    while acked < len(conversations):
        frame = json.loads(await ws.recv())
        assert frame.get("type") != "error", frame
        if frame.get("type") == "subscribed":
            acked += 1


def small_buffer_socket(port: int) -> socket.socket:
    """A client socket with a small receive buffer: a reader that stops reading makes the
    server's writes block soon (as a phone on a poor network does)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_f7_slow_websocket_client_is_dropped_others_unaffected(
    infra: FaultInfra, log_dir: Path
) -> None:
    figures = record(
        Figures(
            "F7",
            "one WebSocket client reads 1 frame/s, 3 read at full rate, during a burst",
            checks=True,
        )
    )
    fast_seqs: list[list[int]] = [[] for _ in range(FAST_CLIENTS)]
    slow: dict[str, Any] = {"frames": 0, "code": None, "reason": "", "closed_after_s": None}
    async with running_stack(
        infra,
        log_dir,
        routers=1,
        extra_env={
            "OMNI_WS_SEND_QUEUE_SIZE": str(SEND_QUEUE),
            "OMNI_WS_SEND_TIMEOUT_SECONDS": str(SEND_TIMEOUT),
            "OMNI_WS_SEND_BUFFER_BYTES": str(SEND_BUFFER),
        },
    ) as stack:
        api = stack.services["agent_api"]
        assert api.process is not None
        token = await supervisor_token(api.base_url)
        ws_url = api.base_url.replace("http://", "ws://") + "/v1/ws"
        async with httpx.AsyncClient(base_url=stack.ingest.base_url) as client:
            load = Load()
            await open_sessions(client, SESSIONS, load)
            await send_messages(client, load, SESSIONS)  # one conversation per customer
            first_stored = await wait_stored(
                stack.database_url, stack.workspace_id, list(load.acked), within_seconds=180
            )
            assert first_stored is not None, "the first messages were not stored"
            database = Database(stack.database_url)
            try:
                async with database.sessions() as session:
                    conversations = list(
                        await session.scalars(
                            select(Conversation.id).where(
                                Conversation.workspace_id == stack.workspace_id
                            )
                        )
                    )
            finally:
                await database.dispose()
            await asyncio.sleep(2)  # the first messages' events reach the stream
            start = await stream_position(stack.database_url, stack.workspace_id)
            fast_sockets = [
                await connect(f"{ws_url}?last_seq={start}") for _ in range(FAST_CLIENTS)
            ]
            slow_socket = await connect(
                f"{ws_url}?last_seq={start}",
                sock=small_buffer_socket(api.port),
                max_queue=1,
                ping_interval=None,  # the stalled reader does not give up on its own
            )
            for ws in [*fast_sockets, slow_socket]:
                await follow_all(ws, token, conversations)
            burst_from = await stream_position(stack.database_url, stack.workspace_id)
            done = asyncio.Event()

            async def fast(ws: ClientConnection, into: list[int]) -> None:
                while not done.is_set():
                    try:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=1))
                    except TimeoutError:
                        continue
                    if "seq" in frame and frame.get("type") not in ("ready", "heartbeat"):
                        into.append(int(frame["seq"]))

            async def slow_reader(ws: ClientConnection) -> None:
                began = time.monotonic()
                try:
                    while True:
                        await ws.recv()
                        slow["frames"] += 1
                        if not done.is_set():
                            await asyncio.sleep(1)  # one frame a second during the burst
                except ConnectionClosed as closed:
                    slow["closed_after_s"] = round(time.monotonic() - began, 1)
                    # No close frame reached the client: 1006, as websockets reports it.
                    slow["code"] = closed.rcvd.code if closed.rcvd is not None else 1006
                    slow["reason"] = closed.rcvd.reason if closed.rcvd is not None else ""

            readers = [
                asyncio.create_task(fast(ws, seqs))
                for ws, seqs in zip(fast_sockets, fast_seqs, strict=True)
            ]
            slow_task = asyncio.create_task(slow_reader(slow_socket))
            dropped_before = await slow_clients_dropped(api.base_url)
            before = rss_kib(api.process.pid)
            peak = before["VmRSS"]
            sending = asyncio.create_task(
                send_messages(
                    client,
                    load,
                    BURST,
                    first=SESSIONS,
                    concurrency=16,
                    text_padding=TEXT_BYTES,
                    give_up_seconds=20,
                    within_seconds=240,
                )
            )
            while not sending.done():
                peak = max(peak, rss_kib(api.process.pid)["VmRSS"])
                await asyncio.sleep(0.5)
            await sending
            await wait_stored(
                stack.database_url, stack.workspace_id, list(load.acked), within_seconds=180
            )
            wanted, backlog_bytes = await expected_frames(
                stack.database_url, stack.workspace_id, burst_from, set(conversations)
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(
                not set(wanted) <= set(seqs) for seqs in fast_seqs
            ):
                peak = max(peak, rss_kib(api.process.pid)["VmRSS"])
                await asyncio.sleep(0.5)
            after = rss_kib(api.process.pid)
            dropped = await slow_clients_dropped(api.base_url) - dropped_before
            done.set()  # the slow client now reads what its socket holds, to its close frame
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slow_task, timeout=60)
            slow_task.cancel()
            await asyncio.gather(*readers)
            for ws in [*fast_sockets, slow_socket]:
                await ws.close()
    reasons = drop_reasons(log_dir / "agent_api.1.log")
    gaps = [len(set(wanted) - set(seqs)) for seqs in fast_seqs]
    repeats = [len(seqs) - len(set(seqs)) for seqs in fast_seqs]
    disorder = [sum(1 for a, b in itertools.pairwise(seqs) if b <= a) for seqs in fast_seqs]
    growth_mb = (peak - before["VmRSS"]) / 1024
    backlog_mb = backlog_bytes / 2**20
    figures.cases = len(wanted) * FAST_CLIENTS
    delivered = sum(len(set(wanted) & set(seqs)) for seqs in fast_seqs)
    figures.summary = (
        f"agent_api closed {dropped:.0f} slow client with {CLOSE_SLOW_CONSUMER}, the client "
        f"saw close {slow['code']} after {slow['frames']} frames; "
        f"{FAST_CLIENTS} fast clients got {delivered}/{figures.cases} frames, "
        f"{sum(gaps)} gaps; agent_api RSS "
        f"{before['VmRSS'] / 1024:.0f} -> peak {peak / 1024:.0f} -> "
        f"{after['VmRSS'] / 1024:.0f} MB while the slow client fell {backlog_mb:.0f} MB behind"
    )
    figures.notes.append(
        f"burst of {BURST} messages, {len(wanted)} frames ({backlog_bytes / 1024:.0f} KiB) per "
        f"client; fast clients received {[len(s) for s in fast_seqs]}, gaps {gaps}, "
        f"repeats {repeats}, out of order {disorder}; slow client read {slow['frames']} "
        f"frames, close {slow['code']} {slow['reason']!r} "
        f"(observed {slow['closed_after_s']} s after it began); agent_api VmRSS before "
        f"{before['VmRSS']} KiB, peak {peak} KiB, after {after['VmRSS']} KiB "
        f"(VmHWM, the process's lifetime peak: {before['VmHWM']} KiB before the burst, "
        f"{after['VmHWM']} KiB after); send queue {SEND_QUEUE} frames, send timeout "
        f"{SEND_TIMEOUT:g} s, SO_SNDBUF {SEND_BUFFER // 1024} KiB per socket; agent_api's "
        f"4008 log: {reasons}"
    )
    problems = [
        name
        for name, holds in {
            f"agent_api closed exactly the slow client with {CLOSE_SLOW_CONSUMER} "
            f"({dropped:.0f})": dropped == 1,
            "the slow client was disconnected": slow["code"] is not None,
            "fast clients: no gap": not any(gaps),
            "fast clients: no repeat": not any(repeats),
            "fast clients: stream order": not any(disorder),
            # Unbounded, the process would hold the slow client's whole backlog.
            f"agent_api RSS growth ({growth_mb:.0f} MB) under half the slow client's "
            f"backlog ({backlog_mb:.0f} MB)": growth_mb < backlog_mb / 2,
            "the burst reached the clients": len(wanted) >= BURST,
        }.items()
        if not holds
    ]
    figures.outcome = "pass" if not problems else "FAIL"
    figures.notes.extend(problems)
    assert problems == [], problems
