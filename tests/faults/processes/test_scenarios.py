"""F1, F2, F3, F5 against real processes, Apache Kafka and PostgreSQL (`make faults`).

Every scenario drives web-chat customers through ingest over HTTP (they retry until
acknowledged, as providers do), injects its fault, then reconciles: every acknowledged
message stored exactly once, in one conversation per customer, with at most one owner;
every stored message has its one ``message.created`` event; the dead-letter topic holds
exactly the poison records. Sizes are scaled for a shared 2-core machine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from devmode.seed import DEMO_PASSWORD
from services.agent_api.realtime.hub import audience, frame_of
from shared.db.models import Agent, OutboxEvent
from shared.db.session import Database
from shared.events import Channel, Event, MessageReceived, Sender, Topic, encode_event
from shared.outbox import event_of
from tests.faults.processes.conftest import record
from tests.faults.processes.harness import (
    FaultInfra,
    Figures,
    Load,
    inbound_records_of,
    open_sessions,
    reconcile,
    running_stack,
    send_messages,
    verdict,
    wait_stored,
)

pytestmark = pytest.mark.faults

SESSIONS = 200
SETTLE_SECONDS = 180


async def progress(load: Load, reached: int) -> None:
    """Until ``reached`` messages are acknowledged (polled: the load has no events)."""
    while load.sent < reached:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def finish(
    figures: Figures, *, expect_dead_letters: int = 0, also: dict[str, bool] | None = None
) -> None:
    """Mark the row pass/FAIL and fail the test on any broken bar (``also``: more bars,
    by name, True when they hold)."""
    problems = verdict(figures, expect_dead_letters=expect_dead_letters)
    problems += [name for name, holds in (also or {}).items() if not holds]
    figures.outcome = "pass" if not problems else "FAIL"
    figures.notes.extend(problems)
    assert problems == [], problems


@dataclass
class StreamFollower:
    """A supervisor's socket on the live stream, as a console keeps it: after every
    close (or, with ``drop_every``, a drop of its own without a close handshake) it
    reconnects with ``?last_seq=`` of the last frame it got. Records every position
    received and every close code the server sent."""

    ws_url: str
    token: str
    drop_every: int | None = None
    received: list[int] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    drops: int = 0
    connections: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        last = 0
        while not self.done.is_set():
            try:
                async with connect(f"{self.ws_url}?last_seq={last}") as ws:
                    self.connections += 1
                    await ws.send(json.dumps({"type": "auth", "token": self.token}))
                    count = 0
                    while self.drop_every is None or count < self.drop_every:
                        try:
                            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=1))
                        except TimeoutError:
                            if self.done.is_set():
                                return
                            continue
                        if frame.get("type") in ("ready", "heartbeat", "pong"):
                            continue
                        assert frame.get("type") != "reset", frame
                        last = int(frame["seq"])
                        self.received.append(last)
                        count += 1
                    ws.transport.abort()  # dropped: no close handshake
                    self.drops += 1
            except ConnectionClosed as closed:
                self.close_codes.append(closed.rcvd.code if closed.rcvd is not None else None)
            except (OSError, InvalidHandshake, TimeoutError):
                await asyncio.sleep(0.2)  # the service is restarting: retry until it listens

    async def caught_up(self, wanted: list[int], *, within_seconds: float) -> None:
        deadline = time.monotonic() + within_seconds
        while time.monotonic() < deadline and (  # noqa: ASYNC110
            not self.received or (wanted and self.received[-1] < wanted[-1])
        ):
            await asyncio.sleep(0.5)

    def figures(self, wanted: list[int]) -> tuple[list[int], int, int]:
        """Gaps (wanted, never received), repeats and out-of-order frames."""
        gaps = sorted(set(wanted) - set(self.received))
        repeats = len(self.received) - len(set(self.received))
        disorder = sum(1 for a, b in itertools.pairwise(self.received) if b <= a)
        return gaps, repeats, disorder


async def supervisor_id(database_url: str, workspace_id: uuid.UUID) -> uuid.UUID:
    database = Database(database_url)
    try:
        async with database.sessions() as session:
            sam = await session.scalar(
                select(Agent.id).where(
                    Agent.workspace_id == workspace_id, Agent.email == "sam@demo.omniroute.dev"
                )
            )
    finally:
        await database.dispose()
    assert sam is not None
    return sam


async def test_f1_sigkill_of_routers_mid_run(infra: FaultInfra, log_dir: Path) -> None:
    figures = record(Figures("F1", "SIGKILL a router process mid-run (2 routers)"))
    messages, kills = 10_000, 4
    recoveries: list[float] = []
    async with running_stack(infra, log_dir, routers=2) as stack:
        async with httpx.AsyncClient(base_url=stack.ingest.base_url) as client:
            load = Load()
            await open_sessions(client, SESSIONS, load)
            sending = asyncio.create_task(send_messages(client, load, messages))
            for kill in range(kills):
                await progress(load, messages * (kill + 1) // (kills + 1))
                victim = stack.routers[kill % len(stack.routers)]
                acked_before = list(load.acked)
                victim.signal(signal.SIGKILL)
                await asyncio.to_thread(victim.wait, 10)
                victim.start()
                took, _ = await asyncio.gather(
                    wait_stored(
                        stack.database_url,
                        stack.workspace_id,
                        acked_before,
                        within_seconds=SETTLE_SECONDS,
                    ),
                    victim.ready(),
                )
                if took is not None:
                    recoveries.append(took)
            await sending
        await reconcile(stack, load, figures, settle_seconds=SETTLE_SECONDS)
    figures.max_recovery_seconds = max(recoveries, default=None)
    figures.notes.append(f"{kills} SIGKILLs, {messages} messages, {SESSIONS} customers")
    finish(figures)


async def test_f2_broker_stopped_and_restarted_during_ingest(
    infra: FaultInfra, log_dir: Path
) -> None:
    figures = record(Figures("F2", "stop and restart the Kafka broker during ingest"))
    messages = 3000
    async with running_stack(infra, log_dir, routers=1) as stack:
        async with httpx.AsyncClient(base_url=stack.ingest.base_url) as client:
            load = Load()
            await open_sessions(client, SESSIONS, load)
            sending = asyncio.create_task(send_messages(client, load, messages))
            await progress(load, messages // 4)
            statuses_before = load.statuses.copy()
            down_since = time.monotonic()
            await infra.kafka("down")
            await asyncio.sleep(8)
            await infra.kafka("up")
            down_for = time.monotonic() - down_since
            refused_while_down = load.statuses[503] - statuses_before[503]
            acked_so_far = list(load.acked)
            recovery = await wait_stored(
                stack.database_url,
                stack.workspace_id,
                acked_so_far,
                within_seconds=SETTLE_SECONDS,
            )
            await sending
        await reconcile(stack, load, figures, settle_seconds=SETTLE_SECONDS)
    figures.max_recovery_seconds = recovery
    figures.notes.append(
        f"{load.sent} of {messages} acknowledged; broker stopped, down and started again "
        f"in {down_for:.0f} s; ingest answered "
        f"{refused_while_down} x 503 meanwhile; statuses {dict(load.statuses)}"
    )
    server_errors = {s: n for s, n in load.statuses.items() if s >= 500 and s != 503}
    finish(
        figures,
        also={
            "ingest answers 503 while the broker is down": refused_while_down > 0,
            "ingest acknowledges every message once the broker is back": load.sent == messages,
            f"no other server errors ({server_errors})": not server_errors,
        },
    )


async def test_f3_postgres_restarted_during_routing(infra: FaultInfra, log_dir: Path) -> None:
    figures = record(Figures("F3", "restart PostgreSQL during routing"))
    messages = 3000
    async with running_stack(infra, log_dir, routers=2) as stack:
        async with httpx.AsyncClient(base_url=stack.ingest.base_url) as client:
            load = Load()
            await open_sessions(client, SESSIONS, load)
            sending = asyncio.create_task(send_messages(client, load, messages))
            await progress(load, messages // 4)
            down_since = time.monotonic()
            await infra.postgres("down")
            await asyncio.sleep(8)
            await infra.postgres("up")
            figures.notes.append(
                f"database stopped, down and started in {time.monotonic() - down_since:.0f} s"
            )
            acked_so_far = list(load.acked)
            recovery = await wait_stored(
                stack.database_url,
                stack.workspace_id,
                acked_so_far,
                within_seconds=SETTLE_SECONDS,
            )
            await sending
        for router in stack.routers:
            assert router.process is not None
            figures.notes.append(
                f"{router.name} {'running' if router.process.poll() is None else 'exited'}"
            )
        await reconcile(stack, load, figures, settle_seconds=SETTLE_SECONDS)
    figures.max_recovery_seconds = recovery
    finish(figures)


def poison_records(
    workspace_id: uuid.UUID, count: int
) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """(key, value, headers) of records no router can process, of several kinds."""
    valid = encode_event(
        Event.of(
            MessageReceived(
                workspace_id=workspace_id,
                channel=Channel.WEBCHAT,
                provider_message_id="poison",
                thread_key="poison",
                sender=Sender(address="poison"),
                text="x",
                received_at=datetime.now(UTC),
            ),
            source="faults",
        ),
        topic=Topic.INBOUND.value,
        key="k",
    )
    document = json.loads(valid.value)
    broken = {k: v for k, v in document.items() if k != "thread_key"}
    kinds = [
        (b"{not json", valid.headers),
        (json.dumps(broken).encode(), valid.headers),
        (valid.value, [(k, v) for k, v in valid.headers if k != "ce_type"]),
        (
            valid.value,
            [(k, b"omniroute.unknown.v1" if k == "ce_type" else v) for k, v in valid.headers],
        ),
        (b"[1, 2, 3]", valid.headers),
    ]
    records = []
    for number in range(count):
        value, headers = kinds[number % len(kinds)]
        key = f"{workspace_id}:webchat:poison-{number}".encode()
        records.append((key, value, list(headers)))
    return records


async def test_f5_poison_records_go_to_the_dead_letter_topic(
    infra: FaultInfra, log_dir: Path
) -> None:
    figures = record(Figures("F5", "poison records, 10 per 1 000"))
    valid, poison = 990, 10
    async with running_stack(infra, log_dir, routers=2) as stack:
        producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap, acks="all")
        await producer.start()
        try:
            async with httpx.AsyncClient(base_url=stack.ingest.base_url) as client:
                load = Load()
                await open_sessions(client, SESSIONS, load)
                sending = asyncio.create_task(send_messages(client, load, valid))
                for number, (key, value, headers) in enumerate(
                    poison_records(stack.workspace_id, poison)
                ):
                    await progress(load, valid * number // poison)
                    await producer.send_and_wait(
                        Topic.INBOUND.value, value=value, key=key, headers=headers
                    )
                await sending
        finally:
            await producer.stop()
        await reconcile(stack, load, figures, settle_seconds=SETTLE_SECONDS)
        dead = await inbound_records_of(
            infra.bootstrap, stack.workspace_id, f"{Topic.INBOUND.value}.dlq"
        )
    figures.sent += poison
    figures.dead_lettered = len(dead)
    keys = sorted(r.key.decode() for r in dead)
    errors = [dict(r.headers).get("omni_dlq_error", b"") for r in dead]
    figures.duplicates_absorbed = max(0, figures.duplicates_absorbed - poison)
    wanted = sorted(f"{stack.workspace_id}:webchat:poison-{n}" for n in range(poison))
    figures.notes.append(f"dead-letter errors: {sorted({e.decode()[:60] for e in errors})}")
    finish(
        figures,
        expect_dead_letters=poison,
        also={
            "exactly the poison records are dead-lettered": keys == wanted,
            "every dead letter carries its error": all(errors),
        },
    )


async def test_f4_every_delivery_three_times_through_the_processes(
    infra: FaultInfra, log_dir: Path
) -> None:
    figures = record(Figures("F4", "every webhook delivered 3x (processes, Kafka, PostgreSQL)"))
    messages = 1000
    async with running_stack(infra, log_dir, routers=2) as stack:
        async with httpx.AsyncClient(base_url=stack.ingest.base_url) as client:
            load = Load()
            await open_sessions(client, SESSIONS, load)
            await send_messages(client, load, messages, copies=3)
        await reconcile(stack, load, figures, settle_seconds=SETTLE_SECONDS)
    figures.notes.append(
        f"{messages} messages x 3 deliveries (in-process, every channel: tests/faults/"
        "test_duplicate_deliveries.py)"
    )
    finish(
        figures, also={"every copy reached the broker": figures.duplicates_absorbed >= 2 * messages}
    )


async def test_f12_rolling_sigterm_during_load(infra: FaultInfra, log_dir: Path) -> None:
    figures = record(Figures("F12", "SIGTERM every process during load (rolling deploy)"))
    messages = 3000
    during_load: dict[str, int] = {}
    exits: dict[str, int | None] = {}
    async with running_stack(infra, log_dir, routers=2) as stack:
        api = stack.services["agent_api"]
        # A supervisor's console on the live stream through every restart: agent_api's
        # SIGTERM closes it with 1012 and it resumes from its last position.
        follower = StreamFollower(
            api.base_url.replace("http://", "ws://") + "/v1/ws",
            await supervisor_token(api.base_url),
        )
        watcher = asyncio.create_task(follower.run())
        async with httpx.AsyncClient(base_url=stack.ingest.base_url) as client:
            load = Load()
            await open_sessions(client, SESSIONS, load)
            # A paced load (at most ~40 messages/s) that outlasts every restart; recovery
            # is measured beside it, so the next SIGTERM does not wait for the backlog.
            sending = asyncio.create_task(
                send_messages(client, load, messages, concurrency=4, pause_seconds=0.1)
            )
            measuring: list[asyncio.Task[float | None]] = []
            order = [*stack.routers, stack.ingest, api]
            for step, service in enumerate(order):
                await progress(load, messages * (step + 1) // (len(order) + 1))
                acked_before = list(load.acked)
                during_load[service.name] = load.sent
                service.signal(signal.SIGTERM)
                exits[service.name] = await asyncio.to_thread(service.wait, 40)
                service.start()
                measuring.append(
                    asyncio.create_task(
                        wait_stored(
                            stack.database_url,
                            stack.workspace_id,
                            acked_before,
                            within_seconds=SETTLE_SECONDS,
                        )
                    )
                )
                await service.ready()
            await sending
            recoveries = [t for t in await asyncio.gather(*measuring) if t is not None]
        await reconcile(stack, load, figures, settle_seconds=SETTLE_SECONDS)
        sam = await supervisor_id(stack.database_url, stack.workspace_id)
        wanted = await expected_supervisor_seqs(stack.database_url, stack.workspace_id, sam)
        await follower.caught_up(wanted, within_seconds=60)
        follower.done.set()
        await watcher
    gaps, repeats, disorder = follower.figures(wanted)
    figures.max_recovery_seconds = max(recoveries, default=None)
    figures.notes.append(
        f"SIGTERM at acknowledged {during_load}; exit codes {exits}; "
        f"{load.cut_requests} requests cut mid-flight, "
        f"{load.transport_errors - load.cut_requests} refused connections (retried); "
        f"supervisor WebSocket: close codes {follower.close_codes}, "
        f"{len(follower.received)} frames over {follower.connections} connections, "
        f"{len(gaps)} gaps, {repeats} repeats, {disorder} out of order"
    )
    # uvicorn re-raises the SIGTERM after its graceful shutdown: -15 is a clean exit too.
    finish(
        figures,
        also={
            "every process exits cleanly": all(code in (0, -15) for code in exits.values()),
            "in-flight requests finish during a SIGTERM": load.cut_requests == 0,
            "every SIGTERM lands while the load runs": all(
                sent < messages for sent in during_load.values()
            ),
            "the WebSocket is closed with 1012 on agent_api's SIGTERM": 1012
            in follower.close_codes,
            "the WebSocket resumes without a gap": bool(follower.received) and not gaps,
            "no repeated frame after resuming": repeats == 0,
            "stream order kept across the restart": disorder == 0,
        },
    )


async def supervisor_token(base_url: str, email: str = "sam@demo.omniroute.dev") -> str:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post(
            "/v1/auth/token",
            json={"workspace": "demo", "email": email, "password": DEMO_PASSWORD},
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


async def expected_supervisor_seqs(
    database_url: str, workspace_id: uuid.UUID, supervisor_id: uuid.UUID
) -> list[int]:
    """The stream positions a supervisor's socket must deliver (by the hub's audience)."""
    database = Database(database_url)
    try:
        async with database.sessions() as session:
            rows = (
                await session.scalars(
                    select(OutboxEvent)
                    .where(OutboxEvent.workspace_id == workspace_id, OutboxEvent.seq.is_not(None))
                    .order_by(OutboxEvent.seq)
                )
            ).all()
    finally:
        await database.dispose()
    wanted = []
    for row in rows:
        event = event_of(row)
        who = audience(event)
        if frame_of(event) is not None and (who.supervisors or supervisor_id in who.agents):
            wanted.append(int(row.seq or 0))
    return wanted


async def test_f6_websocket_dropped_mid_stream_resumes_without_gaps(
    infra: FaultInfra, log_dir: Path
) -> None:
    figures = record(
        Figures("F6", "supervisor WebSocket dropped mid-stream, resumed by seq (2 routers)")
    )
    messages, drop_every = 2000, 40
    async with running_stack(infra, log_dir, routers=2) as stack:
        api = stack.services["agent_api"]
        follower = StreamFollower(
            api.base_url.replace("http://", "ws://") + "/v1/ws",
            await supervisor_token(api.base_url),
            drop_every=drop_every,
        )
        watcher = asyncio.create_task(follower.run())
        async with httpx.AsyncClient(base_url=stack.ingest.base_url) as client:
            load = Load()
            await open_sessions(client, SESSIONS, load)
            await send_messages(client, load, messages)
        await reconcile(stack, load, figures, settle_seconds=SETTLE_SECONDS)
        sam = await supervisor_id(stack.database_url, stack.workspace_id)
        wanted = await expected_supervisor_seqs(stack.database_url, stack.workspace_id, sam)
        await follower.caught_up(wanted, within_seconds=60)
        follower.done.set()
        await watcher
    gaps, repeats, disorder = follower.figures(wanted)
    drops = follower.drops
    figures.notes.append(
        f"{len(follower.received)} frames over {drops + 1} connections ({drops} drops); "
        f"{len(gaps)} gaps, {repeats} repeats, {disorder} out of order"
    )
    finish(
        figures,
        also={
            "the socket was dropped at least once": drops > 0,
            "no gap": not gaps,
            "no repeat": repeats == 0,
            "stream order": disorder == 0,
        },
    )
