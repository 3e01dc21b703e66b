"""The fault harness: its own Apache Kafka and PostgreSQL (started by `make faults` with
the deploy/ scripts on ports of their own), the three services as OS processes, a load
generator that behaves like a provider (retries until acknowledged), the faults, and
the reconciliation of what was acknowledged against what was stored and published.

Nothing here touches the shared development broker and database: every address comes
from ``OMNI_FAULTS_*`` variables, and the broker and database are stopped and started
only through the deploy scripts with the fault suite's own ports and data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import func, select

from devmode.seed import seed_demo
from shared.bus.kafka import KafkaBus
from shared.db.migrate import upgrade
from shared.db.models import Assignment, Conversation, Message, OutboxEvent
from shared.db.session import Database
from shared.events import ALL_TOPICS, MessageCreated, Topic
from tests.conftest import free_port
from tests.e2e.processes import PROJECT_ROOT

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
DEPLOY = PROJECT_ROOT / "deploy"
PARTITIONS = 6


@dataclass(frozen=True)
class FaultInfra:
    """The fault suite's own broker and database (never the shared ones)."""

    bootstrap: str
    admin_url: str
    script_env: dict[str, str]

    @classmethod
    def from_environment(cls) -> FaultInfra | None:
        bootstrap = os.environ.get("OMNI_FAULTS_KAFKA_BOOTSTRAP_SERVERS")
        admin_url = os.environ.get("OMNI_FAULTS_DATABASE_URL")
        if not bootstrap or not admin_url:
            return None
        names = (
            "OMNI_KAFKA_PORT",
            "OMNI_KAFKA_CONTROLLER_PORT",
            "OMNI_PG_PORT",
            "OMNI_DATA_DIR",
            "OMNI_PG_DATA_DIR",
        )
        script_env = {name: os.environ[name] for name in names if name in os.environ}
        shared = {"9092", "5432"}
        if (
            script_env.get("OMNI_KAFKA_PORT", "9092") in shared
            or script_env.get("OMNI_PG_PORT", "5432") in shared
        ):
            raise RuntimeError("the fault suite needs its own ports (see `make faults`)")
        return cls(bootstrap, admin_url, script_env)

    def _script(self, name: str, action: str) -> None:
        subprocess.run(  # noqa: S603 - our own deploy script
            ["bash", str(DEPLOY / name), action],  # noqa: S607
            env={**os.environ, **self.script_env},
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=180,
        )

    async def kafka(self, action: str) -> None:
        await asyncio.to_thread(self._script, "kafka.sh", action)

    async def postgres(self, action: str) -> None:
        await asyncio.to_thread(self._script, "postgres.sh", action)

    async def fresh_database(self) -> str:
        """A new migrated database on the fault suite's PostgreSQL."""
        import asyncpg

        base, _, _ = self.admin_url.rpartition("/")
        name = f"omniroute_faults_{uuid.uuid4().hex[:10]}"
        connection = await asyncpg.connect(self.admin_url.replace("+asyncpg", ""))
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        url = f"{base}/{name}"
        await asyncio.to_thread(upgrade, url)
        return url


@dataclass
class Service:
    """One service process that can be killed, terminated and started again."""

    name: str
    module: str
    port: int
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"{self.name}.{self.starts}.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", self.module],
            cwd=PROJECT_ROOT,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if self.wait(25) is None:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        path = self.log_dir / f"{self.name}.{self.starts}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def ready(self, within_seconds: float = 90) -> None:
        deadline = time.monotonic() + within_seconds
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.base_url}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {within_seconds}s:\n{self.log_tail()}")


@dataclass
class Stack:
    """ingest, ``routers`` router processes and agent_api on the fault infrastructure."""

    infra: FaultInfra
    database_url: str
    workspace_id: uuid.UUID
    services: dict[str, Service]

    @property
    def ingest(self) -> Service:
        return self.services["ingest"]

    @property
    def routers(self) -> list[Service]:
        return [s for name, s in self.services.items() if name.startswith("router")]


async def prepare_group(bootstrap: str, group: str, topics: Iterable[str]) -> None:
    """Commit the end of ``topics`` for a new consumer group, so a group that starts at
    the earliest offset reads only what comes after (older scenarios' records stay
    behind) and no partition ever falls back to "latest" after a crash."""
    await KafkaBus(bootstrap, client_id="omni-faults", partitions=PARTITIONS).ensure_topics(
        ALL_TOPICS
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [tp for topic in topics for tp in await partitions_of(consumer, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        offsets = {tp: await consumer.position(tp) for tp in partitions}
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions, once the consumer's metadata knows them."""
    for _ in range(50):
        cluster = await consumer._client.fetch_all_metadata()
        found = cluster.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, p) for p in sorted(found)]
        await asyncio.sleep(0.2)
    raise RuntimeError(f"topic {topic} has no partitions")


@contextlib.asynccontextmanager
async def running_stack(
    infra: FaultInfra, log_dir: Path, *, routers: int = 2, extra_env: dict[str, str] | None = None
) -> AsyncIterator[Stack]:
    database_url = await infra.fresh_database()
    database = Database(database_url)
    try:
        workspace_id = await seed_demo(database)
    finally:
        await database.dispose()
    run = uuid.uuid4().hex[:8]
    router_group = f"omni-router-faults-{run}"
    await prepare_group(infra.bootstrap, router_group, [Topic.INBOUND.value, Topic.DELIVERY.value])
    env = {
        "OMNI_ENVIRONMENT": "test",
        "OMNI_LOG_JSON": "true",
        "OMNI_DATABASE_URL": database_url,
        "OMNI_KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
        "OMNI_SMTP_LISTEN_PORT": "0",
        "OMNI_ROUTER_GROUP_ID": router_group,
        "OMNI_ROUTER_GROUP_START": "earliest",
        "OMNI_OUTBOUND_CONSUMER_GROUP": f"omni-outbound-faults-{run}",
        "OMNI_RATE_LIMIT_PER_MINUTE": "100000",
        "OMNI_ROUTING_TICK_SECONDS": "0.5",
        "OMNI_TOPIC_PARTITIONS": str(PARTITIONS),
        "OMNI_ATTACHMENT_STORE_DIR": str(log_dir / "attachments"),
        **(extra_env or {}),
    }
    ports = {"ingest": free_port(), "agent_api": free_port()}
    ports.update({f"router{i + 1}": free_port() for i in range(routers)})
    port_names = {"ingest": "OMNI_INGEST_PORT", "agent_api": "OMNI_AGENT_API_PORT"}
    services = {
        name: Service(
            name,
            "services." + ("router" if name.startswith("router") else name),
            port,
            {**env, port_names.get(name, "OMNI_ROUTER_PORT"): str(port)},
            log_dir,
        )
        for name, port in ports.items()
    }
    try:
        for service in services.values():
            service.start()
        for service in services.values():
            await service.ready()
        yield Stack(infra, database_url, workspace_id, services)
    finally:
        for service in services.values():
            await asyncio.to_thread(service.stop)


# Load: web-chat customers that retry until acknowledged, like providers do -------------


@dataclass
class Load:
    """What the customers sent and what ingest acknowledged."""

    sessions: list[tuple[str, str]] = field(default_factory=list)
    acked: dict[str, float] = field(default_factory=dict)  # provider id → monotonic time
    attempts: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    cut_requests: int = 0  # accepted connections that broke mid-request (not refusals)
    extra_deliveries: int = 0  # deliberate re-sends of acknowledged messages

    @property
    def sent(self) -> int:
        return len(self.acked)


async def open_sessions(client: httpx.AsyncClient, count: int, load: Load) -> None:
    for _ in range(count):
        response = await client.post("/v1/webchat/demo/sessions", json={"display_name": "Faults"})
        response.raise_for_status()
        body = response.json()
        load.sessions.append((body["session_id"], body["session_token"]))


async def send_messages(
    client: httpx.AsyncClient,
    load: Load,
    count: int,
    *,
    first: int = 0,
    concurrency: int = 16,
    give_up_seconds: float = 60,
    copies: int = 1,
    within_seconds: float = 900,
    pause_seconds: float = 0.0,
    text_padding: int = 0,
) -> None:
    """``count`` messages spread over the sessions; each retried until acknowledged
    (for at most ``give_up_seconds``, and the whole load for ``within_seconds``: a
    system that never recovers ends the scenario with unacknowledged messages)."""
    load_deadline = time.monotonic() + within_seconds
    queue: asyncio.Queue[int] = asyncio.Queue()
    for number in range(first, first + count):
        queue.put_nowait(number)

    async def customer() -> None:
        while not queue.empty() and time.monotonic() < load_deadline:
            number = queue.get_nowait()
            session_id, token = load.sessions[number % len(load.sessions)]
            text = f"message {number}" + " x" * (text_padding // 2)  # longer texts if asked
            body = {"text": text, "client_message_id": f"m{number}"}
            deadline = min(time.monotonic() + give_up_seconds, load_deadline)
            while time.monotonic() < deadline:
                load.attempts += 1
                try:
                    response = await client.post(
                        f"/v1/webchat/sessions/{session_id}/messages",
                        json=body,
                        headers={"authorization": f"Bearer {token}"},
                        timeout=30,
                    )
                except httpx.TransportError as exc:
                    load.transport_errors += 1
                    if not isinstance(exc, httpx.ConnectError):
                        load.cut_requests += 1
                    await asyncio.sleep(0.5)
                    continue
                load.statuses[response.status_code] += 1
                if response.status_code == 202:
                    load.acked[response.json()["message_id"]] = time.monotonic()
                    for _ in range(copies - 1):  # the provider delivers it again anyway
                        again = await client.post(
                            f"/v1/webchat/sessions/{session_id}/messages",
                            json=body,
                            headers={"authorization": f"Bearer {token}"},
                            timeout=30,
                        )
                        load.extra_deliveries += 1
                        load.statuses[again.status_code] += 1
                    await asyncio.sleep(pause_seconds)  # a paced customer
                    break
                await asyncio.sleep(0.5)

    await asyncio.gather(*(customer() for _ in range(concurrency)))


# Reconciliation ----------------------------------------------------------------------


@dataclass
class Figures:
    """One scenario's row of the results table."""

    scenario: str
    title: str
    sent: int = 0
    acked: int = 0
    stored: int = 0
    duplicates_absorbed: int = 0
    lost: int = 0
    duplicate_rows: int = 0
    double_owners: int = 0
    split_threads: int = 0
    missing_events: int = 0
    dead_lettered: int = 0
    max_recovery_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    outcome: str = "not run"
    # Scenarios of checks (F7-F11) fill these instead of the message counts above.
    checks: bool = False
    cases: int = 0
    refused: int | None = None  # 4xx answers
    server_errors: int | None = None  # 5xx answers
    bad_input_kept: str | None = None  # rows stored or records published from bad input
    summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def stored_ids(database_url: str, workspace_id: uuid.UUID) -> Counter[str]:
    database = Database(database_url)
    try:
        async with database.sessions() as session:
            rows = await session.scalars(
                select(Message.provider_message_id).where(
                    Message.workspace_id == workspace_id, Message.direction == "inbound"
                )
            )
            return Counter(str(pid) for pid in rows.all())
    finally:
        await database.dispose()


async def wait_stored(
    database_url: str, workspace_id: uuid.UUID, ids: Iterable[str], *, within_seconds: float
) -> float | None:
    """Seconds until every one of ``ids`` is stored (None if not within the time)."""
    wanted = set(ids)
    started = time.monotonic()
    while time.monotonic() - started < within_seconds:
        try:
            if wanted <= set(await stored_ids(database_url, workspace_id)):
                return time.monotonic() - started
        except Exception:  # noqa: S110 - the database may be down during the fault
            pass
        await asyncio.sleep(0.5)
    return None


async def inbound_records_of(bootstrap: str, workspace_id: uuid.UUID, topic: str) -> list[Any]:
    """Every record of ``workspace_id`` on ``topic`` (from the beginning)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        prefix = f"{workspace_id}:".encode()
        records: list[Any] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for items in batch.values():
                records.extend(r for r in items if (r.key or b"").startswith(prefix))
        return records
    finally:
        await consumer.stop()


async def wait_published(
    database: Database, workspace_id: uuid.UUID, *, within_seconds: float
) -> int:
    """Outbox rows of the workspace still unpublished after at most ``within_seconds``."""
    deadline = time.monotonic() + within_seconds
    while True:
        async with database.sessions() as session:
            left = int(
                await session.scalar(
                    select(func.count(OutboxEvent.id)).where(
                        OutboxEvent.workspace_id == workspace_id,
                        OutboxEvent.published_at.is_(None),
                    )
                )
                or 0
            )
        if left == 0 or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.5)


async def reconcile(stack: Stack, load: Load, figures: Figures, *, settle_seconds: float) -> None:
    """Fill ``figures``: acknowledged vs stored (exactly once, one thread, one owner),
    stored messages vs their events, inbound records vs stored rows."""
    figures.sent = load.attempts + load.extra_deliveries
    figures.acked = len(load.acked)
    await wait_stored(
        stack.database_url, stack.workspace_id, load.acked, within_seconds=settle_seconds
    )
    database = Database(stack.database_url)
    try:
        async with database.sessions() as session:
            messages = (
                await session.execute(
                    select(Message.id, Message.provider_message_id, Message.conversation_id).where(
                        Message.workspace_id == stack.workspace_id,
                        Message.direction == "inbound",
                    )
                )
            ).all()
            threads = (
                await session.execute(
                    select(Conversation.thread_key, func.count())
                    .where(Conversation.workspace_id == stack.workspace_id)
                    .group_by(Conversation.thread_key)
                )
            ).all()
            owners = (
                await session.execute(
                    select(Assignment.conversation_id, func.count())
                    .where(
                        Assignment.workspace_id == stack.workspace_id,
                        Assignment.closed_at.is_(None),
                    )
                    .group_by(Assignment.conversation_id)
                )
            ).all()
            events = (
                await session.scalars(
                    select(OutboxEvent.envelope).where(
                        OutboxEvent.workspace_id == stack.workspace_id,
                        OutboxEvent.event_type == MessageCreated.event_type,
                    )
                )
            ).all()
        unpublished = await wait_published(database, stack.workspace_id, within_seconds=30)
    finally:
        await database.dispose()
    per_id = Counter(str(pid) for _, pid, _ in messages)
    figures.stored = len(per_id)
    figures.lost = len(set(load.acked) - set(per_id))
    figures.duplicate_rows = sum(n - 1 for n in per_id.values())
    figures.double_owners = sum(1 for _, n in owners if n > 1)
    figures.split_threads = sum(1 for _, n in threads if n > 1)
    conversations_per_session: dict[str, set[Any]] = {}
    for _, pid, conversation_id in messages:
        conversations_per_session.setdefault(str(pid).split(":")[0], set()).add(conversation_id)
    figures.split_threads += sum(1 for c in conversations_per_session.values() if len(c) > 1)
    event_ids = Counter(str(e["data"]["message_id"]) for e in events)
    figures.missing_events = sum(1 for mid, _, _ in messages if event_ids[str(mid)] != 1)
    if unpublished:
        figures.notes.append(f"{unpublished} outbox rows still unpublished")
    records = await inbound_records_of(
        stack.infra.bootstrap, stack.workspace_id, Topic.INBOUND.value
    )
    figures.duplicates_absorbed = max(0, len(records) - figures.stored)


def verdict(figures: Figures, *, expect_dead_letters: int = 0) -> list[str]:
    """What breaks the scenario's bar (empty when it holds)."""
    problems = []
    for name in ("lost", "duplicate_rows", "double_owners", "split_threads", "missing_events"):
        if getattr(figures, name):
            problems.append(f"{name}={getattr(figures, name)}")
    if figures.dead_lettered != expect_dead_letters:
        problems.append(f"dead_lettered={figures.dead_lettered} (want {expect_dead_letters})")
    return problems


# The results table ---------------------------------------------------------------------

COLUMNS = (
    ("scenario", "#"),
    ("title", "scenario"),
    ("outcome", "outcome"),
    ("sent", "sent"),
    ("acked", "acked"),
    ("stored", "stored"),
    ("duplicates_absorbed", "dups absorbed"),
    ("lost", "lost"),
    ("duplicate_rows", "dup rows"),
    ("double_owners", "double owners"),
    ("split_threads", "split threads"),
    ("missing_events", "missing events"),
    ("dead_lettered", "dead-lettered"),
    ("max_recovery_seconds", "max recovery s"),
)


CHECK_COLUMNS = (
    ("scenario", "#"),
    ("title", "scenario"),
    ("outcome", "outcome"),
    ("cases", "cases checked"),
    ("refused", "refused 4xx"),
    ("server_errors", "server errors 5xx"),
    ("bad_input_kept", "stored/published from bad input"),
    ("summary", "figures"),
)


def _table(rows: list[Figures], columns: tuple[tuple[str, str], ...]) -> list[str]:
    header = "| " + " | ".join(label for _, label in columns) + " |"
    lines = [header, "|" + "---|" * len(columns)]
    for row in rows:
        values = []
        for key, _ in columns:
            value = getattr(row, key)
            if isinstance(value, float):
                value = f"{value:.1f}"
            values.append("-" if value is None or value == "" else str(value))
        lines.append("| " + " | ".join(values) + " |")
    return lines


def results_table(rows: list[Figures]) -> str:
    messages = [row for row in rows if not row.checks]
    checks = [row for row in rows if row.checks]
    lines = _table(messages, COLUMNS) if messages else []
    if checks:
        lines += [*([""] if lines else []), *_table(checks, CHECK_COLUMNS)]
    notes = [f"- {row.scenario}: {note}" for row in rows for note in row.notes]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def write_results(rows: list[Figures], *, started: float) -> str:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    table = results_table(rows)
    took = time.time() - started
    text = (
        "# Fault suite — latest run\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {took / 60:.1f} min, "
        "own Kafka and PostgreSQL, services as processes. Sizes are scaled for a shared "
        "2-core machine (see docs/faults.md).\n\n" + table
    )
    (RESULTS_DIR / "latest.md").write_text(text)
    (RESULTS_DIR / "latest.json").write_text(
        json.dumps({"seconds": round(took, 1), "scenarios": [r.as_dict() for r in rows]}, indent=2)
        + "\n"
    )
    return table
