"""``make bench``: scenarios B1-B6 against baselines measured in the same run.

Usage: ``python -m tests.perf.bench [--smoke] [--runs N] [--only B1,B2] [--out DIR]``.

Every service and every load generator is its own process on loopback; each scenario
works in a database of its own (``bench_<scenario>_<random>``, dropped afterwards) and
the routers in a consumer group of their own, so other users of the shared broker and
PostgreSQL are not disturbed. ``--smoke`` runs tiny loads in seconds and only proves the
harness counts right (``tests/perf/test_bench_smoke.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from services.agent_api.auth import AgentClaims, issue_agent_token
from shared.settings import Settings
from tests.perf import seed
from tests.perf.common import (
    ADMIN_URL_DEFAULT,
    KAFKA_DEFAULT,
    PROJECT_ROOT,
    BenchDatabase,
    Proc,
    create_database,
    drop_database,
    finish_json,
    free_port,
    latency_summary,
    raise_fd_limit,
    read_ready_line,
    rss_kib,
    run_json,
    spawn,
    spread,
    start_json,
    stop,
    wait_consumer_assigned,
    wait_http_ready,
)

PUBLIC_BASE_URL = "https://ingest.bench.test"


@dataclass(frozen=True)
class Sizes:
    """Load sizes; ``SMOKE`` proves the harness in seconds, ``FULL`` is ``make bench``."""

    runs: int
    b1_seconds: float
    b1_concurrency: int
    b1_fractions: tuple[float, ...]
    b2_messages: int
    b2_conversations: int
    b3_conversations: int
    b3_agents: int
    b4_seconds: float
    b5_sockets: int
    b5_events: int
    b6_small: int
    b6_large: int
    b6_messages: int


FULL = Sizes(
    runs=3,
    b1_seconds=3,
    b1_concurrency=32,
    b1_fractions=(0.25, 0.5, 0.75, 1.0),
    b2_messages=1500,
    b2_conversations=1000,
    b3_conversations=10_000,
    b3_agents=500,
    b4_seconds=8,
    b5_sockets=5000,
    b5_events=20,
    b6_small=1_000,
    b6_large=1_000_000,
    b6_messages=1500,
)
SMOKE = Sizes(
    runs=1,
    b1_seconds=1,
    b1_concurrency=4,
    b1_fractions=(0.5,),
    b2_messages=60,
    b2_conversations=20,
    b3_conversations=80,
    b3_agents=10,
    b4_seconds=2,
    b5_sockets=20,
    b5_events=3,
    b6_small=20,
    b6_large=200,
    b6_messages=40,
)


@dataclass
class Bench:
    sizes: Sizes
    admin_url: str
    kafka: str
    log_dir: Path
    profile: frozenset[str] = frozenset()
    b4_rate: float = 25.0  # B4's rate when B2 did not run
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    results: dict[str, Any] = field(default_factory=dict)

    def service_env(self, database: BenchDatabase, **extra: str) -> dict[str, str]:
        return {
            "OMNI_ENVIRONMENT": "test",
            "OMNI_DATABASE_URL": database.url,
            "OMNI_KAFKA_BOOTSTRAP_SERVERS": self.kafka,
            "OMNI_LOG_LEVEL": "WARNING",
            "OMNI_SMTP_LISTEN_PORT": "0",
            "OMNI_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "OMNI_ROUTER_GROUP_ID": f"omni-router-bench-{self.run_id}",
            "OMNI_ROUTER_GROUP_START": "latest",
            "OMNI_OUTBOUND_CONSUMER_GROUP": self.outbound_group,
            "OMNI_ATTACHMENT_STORE_DIR": str(self.log_dir / "attachments"),
            "OMNI_RATE_LIMIT_PER_MINUTE": "100000000",
            **extra,
        }

    @property
    def outbound_group(self) -> str:
        return f"omni-outbound-bench-{self.run_id}"

    @contextlib.asynccontextmanager
    async def database(self, label: str) -> AsyncIterator[BenchDatabase]:
        database = await create_database(self.admin_url, label)
        try:
            yield database
        finally:
            await drop_database(self.admin_url, database)

    def start_service(self, name: str, env: dict[str, str], started: list[Proc]) -> Proc:
        port = free_port()
        port_var = {"ingest": "INGEST", "router": "ROUTER", "agent_api": "AGENT_API"}[
            name.split("-")[0]
        ]
        proc = spawn(
            name,
            ["-m", f"services.{name.split('-')[0]}"],
            env={**env, f"OMNI_{port_var}_PORT": str(port)},
            log_dir=self.log_dir,
            port=port,
            profile=name.split("-")[0] in self.profile,
        )
        started.append(proc)
        return proc

    @property
    def router_group(self) -> str:
        return f"omni-router-bench-{self.run_id}"


@contextlib.contextmanager
def stopping(procs: list[Proc]) -> Any:
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            stop(proc)


def say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - the bench reports as it goes


# B1 ----------------------------------------------------------------------------------


async def seed_channel_accounts(dsn: str, workspace_id: uuid.UUID) -> dict[str, str]:
    sms_id, mail_id = uuid.uuid4(), uuid.uuid4()
    connection = await asyncpg.connect(dsn)
    try:
        for account_id, channel, adapter, address, secret in (
            (sms_id, "sms", "twilio", "+15550001111", "env:BENCH_TWILIO_SECRET"),
            (mail_id, "email", "mailgun", "support@bench.test", "env:BENCH_MAILGUN_KEY"),
        ):
            await connection.execute(
                "INSERT INTO channel_accounts (id, workspace_id, channel, adapter, address, "
                "display_name, secret_ref, settings, enabled, created_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, '{}'::json, true, now())",
                account_id,
                workspace_id,
                channel,
                adapter,
                address,
                adapter,
                secret,
            )
    finally:
        await connection.close()
    return {"sms": str(sms_id), "mail": str(mail_id)}


def webhook_spec(workspace_id: uuid.UUID, accounts: dict[str, str]) -> dict[str, str]:
    return {
        "workspace_id": str(workspace_id),
        "chat_secret": Settings().chat_session_secret.get_secret_value(),
        "sms_account_id": accounts["sms"],
        "sms_auth_token": "bench-twilio-auth-token",
        "sms_number": "+15550001111",
        "public_base_url": PUBLIC_BASE_URL,
        "mail_account_id": accounts["mail"],
        "mail_key": "bench-mailgun-signing-key",
        "mail_recipient": "support@bench.test",
    }


def wait_tcp(port: int, *, within: float = 30) -> None:
    import socket

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


async def scenario_b1(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    async with bench.database("b1") as database:
        workspace_id = await seed.seed_workspace(database.dsn)
        accounts = await seed_channel_accounts(database.dsn, workspace_id)
        webhooks = webhook_spec(workspace_id, accounts)
        env = bench.service_env(
            database,
            BENCH_TWILIO_SECRET="AC" + "0" * 32 + ":bench-twilio-auth-token",
            BENCH_MAILGUN_KEY="bench-mailgun-signing-key",
        )
        await park_group_at_end(bench, bench.outbound_group, "omni.outbound.v1")
        with stopping([]) as procs:
            ingest = bench.start_service("ingest", env, procs)
            echo_port = free_port()
            echo = spawn(
                "echo",
                ["-m", "tests.perf.baselines", "echo", str(echo_port)],
                env={},
                log_dir=bench.log_dir,
                port=echo_port,
            )
            procs.append(echo)
            wait_http_ready(ingest)
            wait_tcp(echo_port)

            def load(name: str, port: int, **spec: Any) -> dict[str, Any]:
                path = "/echo" if port == echo_port else None
                return run_json(
                    name,
                    "tests.perf.httpload",
                    {"port": port, "webhooks": webhooks, "path": path, **spec},
                    log_dir=bench.log_dir,
                )

            closed = {
                "mode": "closed",
                "seconds": sizes.b1_seconds,
                "concurrency": sizes.b1_concurrency,
            }
            for name, port in (("ingest", ingest.port), ("echo", echo_port)):
                assert port is not None  # warm-up, not recorded: pools, caches, metadata
                load(f"b1-{name}-warmup", port, count=1000, mode="closed", seconds=1, concurrency=8)
            runs: list[dict[str, Any]] = []
            for run in range(sizes.runs):
                order = [("ingest", ingest.port), ("echo", echo_port)]
                if run % 2:
                    order.reverse()
                maxima: dict[str, dict[str, Any]] = {}
                for name, port in order:
                    assert port is not None
                    estimate = 4000 if name == "echo" else 2000
                    maxima[name] = load(
                        f"b1-{name}-max-{run}",
                        port,
                        count=int(estimate * sizes.b1_seconds),
                        **closed,
                    )
                half = maxima["ingest"]["throughput_rps"] / 2
                assert ingest.port is not None
                at_half = load(
                    f"b1-ingest-half-{run}",
                    ingest.port,
                    mode="open",
                    rate=half,
                    count=max(10, int(half * sizes.b1_seconds)),
                )
                runs.append({"max": maxima, "half": at_half})
                say(
                    f"  B1 run {run + 1}: ingest {maxima['ingest']['throughput_rps']:.0f} req/s, "
                    f"echo {maxima['echo']['throughput_rps']:.0f} req/s, p99 at half "
                    f"{at_half['p99_ms']:.1f} ms"
                )
            sweep: dict[str, list[dict[str, Any]]] = {"ingest": [], "echo": []}
            for name, port in (("ingest", ingest.port), ("echo", echo_port)):
                assert port is not None
                top = spread([r["max"][name]["throughput_rps"] for r in runs])["median"]
                for fraction in sizes.b1_fractions:
                    rate = top * fraction
                    sweep[name].append(
                        load(
                            f"b1-{name}-sweep-{fraction}",
                            port,
                            mode="open",
                            rate=rate,
                            count=max(10, int(rate * min(3, sizes.b1_seconds))),
                        )
                    )
    ingest_max = spread([r["max"]["ingest"]["throughput_rps"] for r in runs])
    echo_max = spread([r["max"]["echo"]["throughput_rps"] for r in runs])
    p99 = spread([r["half"]["p99_ms"] for r in runs])
    ratio = ingest_max["median"] / echo_max["median"]
    errors = sum(
        n
        for r in runs
        for part in (r["max"]["ingest"], r["half"])
        for status, n in part["statuses"].items()
        if not status.startswith("2")
    )
    return {
        "scenario": "ingest: signed webhooks (60 % chat, 20 % SMS, 20 % email; 0.5-4 KB) "
        "acked on Kafka",
        "value": ingest_max,
        "unit": "req/s",
        "baseline": echo_max,
        "baseline_name": "bare Starlette POST echo, same uvicorn settings",
        "ratio": ratio,
        "p99_at_half_ms": p99,
        "non_2xx": errors,
        "target": "≥ 60 % of baseline req/s; p99 ≤ 50 ms at half of max",
        "holds": ratio >= 0.6 and p99["median"] <= 50,
        "runs": runs,
        "sweep": sweep,
    }


# B2 / B6 -----------------------------------------------------------------------------


async def routed(dsn: str, workspace_id: uuid.UUID, expected: int, *, within: float) -> float:
    """Wait until ``expected`` inbound messages are stored and every outbox row of the
    workspace is published; the wall time of the last publication (or of now)."""
    connection = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            stored = await connection.fetchval(
                "SELECT count(*) FROM messages WHERE workspace_id = $1 AND direction = 'inbound' "
                "AND text LIKE 'bench#%'",
                workspace_id,
            )
            unpublished = await connection.fetchval(
                "SELECT count(*) FROM outbox_events WHERE workspace_id = $1 "
                "AND published_at IS NULL",
                workspace_id,
            )
            if stored >= expected and unpublished == 0:
                last = await connection.fetchval(
                    "SELECT max(published_at) FROM outbox_events WHERE workspace_id = $1",
                    workspace_id,
                )
                return float(last.timestamp()) if last else time.time()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"only {stored} of {expected} messages routed in {within}s")
    finally:
        await connection.close()


async def route_burst(
    bench: Bench,
    database: BenchDatabase,
    workspace_id: uuid.UUID,
    *,
    messages: int,
    conversations: int,
    already: int,
    new_threads: bool = False,
    seed_value: int = 3,
) -> dict[str, Any]:
    produced = run_json(
        f"produce-{uuid.uuid4().hex[:6]}",
        "tests.perf.kafkaload",
        {
            "role": "inbound",
            "bootstrap": bench.kafka,
            "workspace_id": str(workspace_id),
            "conversations": conversations,
            "count": messages,
            "new_threads": new_threads,
            "seed": seed_value,
        },
        log_dir=bench.log_dir,
    )
    done = await routed(database.dsn, workspace_id, already + messages, within=600)
    seconds = done - produced["started_wall"]
    return {"count": messages, "seconds": seconds, "throughput": messages / seconds}


def router_batches(router: Proc) -> tuple[float, float]:
    """Batches routed and records consumed so far, from the router's /metrics."""
    import httpx

    batches = records = 0.0
    for line in httpx.get(f"{router.base_url}/metrics", timeout=5).text.splitlines():
        if line.startswith("omni_routing_batch_seconds_count "):
            batches = float(line.split()[1])
        if line.startswith('omni_consumed_records_total{consumer="router-inbound"} '):
            records = float(line.split()[1])
    return batches, records


async def b2_like(
    bench: Bench, label: str, conversations: int, messages: int, runs: int, *, baseline: bool
) -> dict[str, Any]:
    async with bench.database(label) as database:
        workspace_id = await seed.seed_workspace(database.dsn)
        (agent,) = await seed.seed_agents(database.dsn, workspace_id, 1, capacity=1e9, mixed=False)
        await seed.seed_conversations(database.dsn, workspace_id, agent, conversations)
        router_runs: list[dict[str, Any]] = []
        raw_runs: list[dict[str, Any]] = []
        with stopping([]) as procs:
            router = bench.start_service("router", bench.service_env(database), procs)
            wait_http_ready(router)
            wait_consumer_assigned(router, bench.router_group)
            for run in range(runs):
                batches_before, records_before = router_batches(router)
                router_runs.append(
                    await route_burst(
                        bench,
                        database,
                        workspace_id,
                        messages=messages,
                        conversations=conversations,
                        already=run * messages,
                        seed_value=run,
                    )
                )
                batches_after, records_after = router_batches(router)
                mean_batch = (records_after - records_before) / max(
                    1.0, batches_after - batches_before
                )
                router_runs[-1]["mean_batch"] = mean_batch
                if baseline:
                    raw_runs.append(
                        run_json(
                            f"{label}-raw-{run}",
                            "tests.perf.rawdb",
                            {
                                "role": "b2",
                                "dsn": database.dsn,
                                "workspace_id": str(workspace_id),
                                "conversations": conversations,
                                "count": messages,
                                "batch": max(1, round(mean_batch)),
                                "seed": run,
                            },
                            log_dir=bench.log_dir,
                        )
                    )
                say(
                    f"  {label} run {run + 1}: router {router_runs[-1]['throughput']:.0f} msg/s "
                    f"(mean batch {mean_batch:.1f})"
                    + (f", raw asyncpg {raw_runs[-1]['throughput']:.0f} msg/s" if baseline else "")
                )
            connection = await asyncpg.connect(database.dsn)
            try:
                duplicates = await connection.fetchval(
                    "SELECT count(*) FROM (SELECT provider_message_id FROM messages "
                    "GROUP BY workspace_id, channel, provider_message_id HAVING count(*) > 1) d"
                )
            finally:
                await connection.close()
    return {"router_runs": router_runs, "raw_runs": raw_runs, "duplicate_messages": duplicates}


async def scenario_b2(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    measured = await b2_like(
        bench, "b2", sizes.b2_conversations, sizes.b2_messages, sizes.runs, baseline=True
    )
    value = spread([r["throughput"] for r in measured["router_runs"]])
    base = spread([r["throughput"] for r in measured["raw_runs"]])
    ratio = value["median"] / base["median"]
    return {
        "scenario": f"routing: {sizes.b2_messages} inbound messages on "
        f"{sizes.b2_conversations} existing conversations consumed, persisted, event emitted",
        "value": value,
        "unit": "msg/s",
        "baseline": base,
        "baseline_name": "raw asyncpg, the router's SQL, the router's mean batch size",
        "ratio": ratio,
        "duplicate_messages": measured["duplicate_messages"],
        "target": "≥ 50 % of baseline msg/s",
        "holds": ratio >= 0.5,
        **measured,
    }


async def scenario_b6(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    runs = max(1, sizes.runs - 1)
    small = await b2_like(bench, "b6s", sizes.b6_small, sizes.b6_messages, runs, baseline=False)
    large = await b2_like(bench, "b6l", sizes.b6_large, sizes.b6_messages, runs, baseline=False)
    value = spread([r["throughput"] for r in large["router_runs"]])
    base = spread([r["throughput"] for r in small["router_runs"]])
    ratio = value["median"] / base["median"]
    return {
        "scenario": f"scale: B2 with {sizes.b6_large:,} vs {sizes.b6_small:,} stored "
        "conversations (seeded with generate_series SQL)",
        "value": value,
        "unit": "msg/s",
        "baseline": base,
        "baseline_name": f"itself with {sizes.b6_small:,} stored conversations",
        "ratio": ratio,
        "target": "≥ 80 % of the small-store throughput",
        "holds": ratio >= 0.8,
        "small": small,
        "large": large,
    }


# B3 ----------------------------------------------------------------------------------

CHECKS = {
    "capacity_violations": """
        SELECT count(*) FROM agents a WHERE a.workspace_id = $1 AND (
            a.load_units > a.capacity_units
            OR (SELECT count(*) FROM assignments s
                WHERE s.agent_id = a.id AND s.closed_at IS NULL) > a.capacity_units)
    """,
    "double_owners": """
        SELECT count(*) FROM (SELECT conversation_id FROM assignments
            WHERE workspace_id = $1 AND closed_at IS NULL
            GROUP BY conversation_id HAVING count(*) > 1) d
    """,
    "owner_mismatches": """
        SELECT count(*) FROM conversations c WHERE c.workspace_id = $1 AND (
            (c.assignee_agent_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM assignments s
                WHERE s.conversation_id = c.id AND s.closed_at IS NULL
                AND s.agent_id = c.assignee_agent_id))
            OR (c.assignee_agent_id IS NULL AND EXISTS (SELECT 1 FROM assignments s
                WHERE s.conversation_id = c.id AND s.closed_at IS NULL)))
    """,
    "assigned": "SELECT count(*) FROM conversations WHERE workspace_id = $1 "
    "AND assignee_agent_id IS NOT NULL",
    "queued": "SELECT count(*) FROM conversations WHERE workspace_id = $1 AND status = 'queued'",
    "conversations": "SELECT count(*) FROM conversations WHERE workspace_id = $1",
}


async def checks(dsn: str, workspace_id: uuid.UUID) -> dict[str, int]:
    connection = await asyncpg.connect(dsn)
    try:
        return {
            name: int(await connection.fetchval(sql, workspace_id)) for name, sql in CHECKS.items()
        }
    finally:
        await connection.close()


async def scenario_b3(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    count, agents = sizes.b3_conversations, sizes.b3_agents
    async with bench.database("b3") as database, bench.database("b3raw") as raw_database:
        workspace_id = await seed.seed_workspace(database.dsn)
        await seed.seed_agents(database.dsn, workspace_id, agents, capacity=5, mixed=True)
        raw_workspace = await seed.seed_workspace(raw_database.dsn)
        await seed.seed_agents(raw_database.dsn, raw_workspace, agents, capacity=5, mixed=True)
        with stopping([]) as procs:
            env = bench.service_env(database)
            routers = [bench.start_service(f"router-{i}", env, procs) for i in (1, 2)]
            for router in routers:
                wait_http_ready(router)
            for router in routers:
                wait_consumer_assigned(router, bench.router_group)
            measured = await route_burst(
                bench,
                database,
                workspace_id,
                messages=count,
                conversations=count,
                already=0,
                new_threads=True,
            )
        found = await checks(database.dsn, workspace_id)
        raw = run_json(
            "b3-raw",
            "tests.perf.rawdb",
            {
                "role": "b3",
                "dsn": raw_database.dsn,
                "workspace_id": str(raw_workspace),
                "count": count,
                "batch": 200,
                "workers": 2,
            },
            log_dir=bench.log_dir,
        )
        raw_found = await checks(raw_database.dsn, raw_workspace)
    say(
        f"  B3: routers {measured['throughput']:.0f} conv/s, raw {raw['throughput']:.0f} conv/s; "
        f"{found}"
    )
    ratio = measured["throughput"] / raw["throughput"]
    return {
        "scenario": f"assignment: {count:,} new conversations, {agents} agents (tiers 1-3, "
        "mixed skills, capacity 5), 2 router processes",
        "value": spread([measured["throughput"]]),
        "unit": "conversations/s",
        "baseline": spread([raw["throughput"]]),
        "baseline_name": "raw asyncpg, the same capacity reservations, 2 connections",
        "ratio": ratio,
        "checks": found,
        "baseline_checks": raw_found,
        "capacity_violations": found["capacity_violations"],
        "double_owners": found["double_owners"],
        "target": "≥ 40 % of baseline; 0 capacity violations; 0 double owners",
        "holds": ratio >= 0.4
        and found["capacity_violations"] == 0
        and found["double_owners"] == 0
        and found["owner_mismatches"] == 0,
        "runs": [measured],
        "raw_runs": [raw],
    }


# B4 ----------------------------------------------------------------------------------


def agent_token(agent_id: uuid.UUID, workspace_id: uuid.UUID) -> str:
    token, _ = issue_agent_token(
        AgentClaims(agent_id=agent_id, workspace_id=workspace_id, role="agent"),
        Settings(environment="test"),
    )
    return token


def latencies(arrival: dict[str, float], start_wall: float, rate: float) -> list[float]:
    return [(t - (start_wall + int(i) / rate)) * 1000 for i, t in arrival.items()]


async def create_topic(bench: Bench, name: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bench.kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def park_group_at_end(bench: Bench, group: str, topic: str) -> None:
    """Commit ``group``'s offsets at the end of ``topic``: a service that joins the group
    starts with what comes next, not with the history other runs left on the broker."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bench.kafka, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # the topic list, to assign all
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in ends.items()})
    finally:
        await consumer.stop()


async def delete_topic(bench: Bench, name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bench.kafka)
    await admin.start()
    try:
        await admin.delete_topics([name])
    except Exception as exc:  # cleanup only
        say(f"  (topic {name} not deleted: {exc})")
    finally:
        await admin.close()


async def scenario_b4(bench: Bench, b2_max: float) -> dict[str, Any]:
    sizes = bench.sizes
    rate = max(5.0, b2_max / 2)
    count = max(10, int(rate * sizes.b4_seconds))
    conversations = 200 if count > 200 else 20
    runs: list[dict[str, Any]] = []
    raw_runs: list[dict[str, Any]] = []
    async with bench.database("b4") as database:
        workspace_id = await seed.seed_workspace(database.dsn)
        (agent,) = await seed.seed_agents(database.dsn, workspace_id, 1, capacity=1e9, mixed=False)
        await seed.seed_conversations(database.dsn, workspace_id, agent, conversations)
        accounts = await seed_channel_accounts(database.dsn, workspace_id)
        webhooks = webhook_spec(workspace_id, accounts)
        sessions = [seed.session_id(i) for i in range(conversations)]
        await park_group_at_end(bench, bench.outbound_group, "omni.outbound.v1")
        with stopping([]) as procs:
            env = bench.service_env(database)
            services = [
                bench.start_service(n, env, procs) for n in ("ingest", "router", "agent_api")
            ]
            for service in services:
                wait_http_ready(service)
            wait_consumer_assigned(services[1], bench.router_group)
            ingest, _, api = services
            for run in range(sizes.runs):
                receiver = start_json(
                    f"b4-ws-{run}",
                    "tests.perf.wsrecv",
                    {
                        "url": api.base_url.replace("http", "ws") + "/v1/ws",
                        "sockets": 1,
                        "token": agent_token(agent, workspace_id),
                        "expected": count,
                        "idle_seconds": 10,
                    },
                    log_dir=bench.log_dir,
                )
                read_ready_line(receiver)
                sent = run_json(
                    f"b4-load-{run}",
                    "tests.perf.httpload",
                    {
                        "port": ingest.port,
                        "webhooks": webhooks,
                        "mode": "open",
                        "rate": rate,
                        "count": count,
                        "sessions": sessions,
                    },
                    log_dir=bench.log_dir,
                )
                got = finish_json(receiver)
                observed = latencies(got["arrival"], sent["start_wall"], rate)
                runs.append(
                    {
                        "sent": count,
                        "acked": sent["ok"],
                        "received": len(got["arrival"]),
                        "ack_p99_ms": sent["p99_ms"],
                        **latency_summary(observed),
                    }
                )
                topic = f"omni.bench.{bench.run_id}.{run}"
                await create_topic(bench, topic, 6)
                try:
                    consumer = start_json(
                        f"b4-raw-consumer-{run}",
                        "tests.perf.kafkaload",
                        {
                            "role": "raw-consumer",
                            "bootstrap": bench.kafka,
                            "topic": topic,
                            "partitions": 6,
                            "expected": count,
                        },
                        log_dir=bench.log_dir,
                    )
                    read_ready_line(consumer)
                    produced = run_json(
                        f"b4-raw-producer-{run}",
                        "tests.perf.kafkaload",
                        {
                            "role": "raw-producer",
                            "bootstrap": bench.kafka,
                            "topic": topic,
                            "rate": rate,
                            "count": count,
                        },
                        log_dir=bench.log_dir,
                    )
                    consumed = finish_json(consumer)
                finally:
                    await delete_topic(bench, topic)
                raw_observed = latencies(consumed["arrival"], produced["start_wall"], rate)
                raw_runs.append(
                    {
                        "sent": count,
                        "received": len(consumed["arrival"]),
                        **latency_summary(raw_observed),
                    }
                )
                say(
                    f"  B4 run {run + 1} at {rate:.0f}/s: webhook→WS p50 {runs[-1]['p50_ms']:.1f} "
                    f"p99 {runs[-1]['p99_ms']:.1f} ms ({runs[-1]['received']}/{count}); raw "
                    f"aiokafka p99 {raw_runs[-1]['p99_ms']:.1f} ms"
                )
    p99 = spread([r["p99_ms"] for r in runs])
    p50 = spread([r["p50_ms"] for r in runs])
    base = spread([r["p99_ms"] for r in raw_runs])
    lost = sum(r["sent"] - r["received"] for r in runs)
    return {
        "scenario": f"end-to-end: signed web-chat webhook → WebSocket frame at the agent, "
        f"open loop at {rate:.0f}/s (half of B2's median max)",
        "value": p99,
        "unit": "ms p99",
        "p50_ms": p50,
        "baseline": base,
        "baseline_name": "raw aiokafka produce→consume p99, same broker, same schedule",
        "ratio": p99["median"] / base["median"] if base["median"] else float("nan"),
        "frames_missing": lost,
        "target": "p99 ≤ 100 ms and ≤ baseline p99 + 50 ms; p50 ≤ 20 ms",
        "holds": p99["median"] <= 100
        and p99["median"] <= base["median"] + 50
        and p50["median"] <= 20
        and lost == 0,
        "offered_rps": rate,
        "runs": runs,
        "raw_runs": raw_runs,
    }


# B5 ----------------------------------------------------------------------------------


async def publish_events(
    database: BenchDatabase, kafka: str, workspace_id: uuid.UUID, agent: uuid.UUID, count: int
) -> None:
    """``count`` message.created events for ``agent``, written and published as the router
    does (outbox row in a transaction, sequencer, Kafka doorbell)."""
    from shared.bus.kafka import KafkaBus
    from shared.db.session import Database
    from shared.events import Channel, MessageCreated, MessageDirection, Topic, conversation_key
    from shared.outbox import commit_and_publish, record_event

    bus = KafkaBus(kafka)
    await bus.start()
    db = Database(database.url)
    conversation = uuid.uuid5(uuid.NAMESPACE_URL, f"{workspace_id}:b5")
    try:
        async with db.sessions() as session:  # one transaction: the fan-out, not the writer
            for index in range(count):
                record_event(
                    session,
                    MessageCreated(
                        workspace_id=workspace_id,
                        conversation_id=conversation,
                        message_id=uuid.uuid4(),
                        channel=Channel.WEBCHAT,
                        direction=MessageDirection.INBOUND,
                        text=f"bench#{index}#" + "x" * 300,
                        assignee_agent_id=agent,
                        created_at=datetime.now(UTC),
                    ),
                    topic=Topic.EVENTS,
                    key=conversation_key(workspace_id, conversation),
                    source="omniroute/bench",
                    subject=str(conversation),
                )
            await commit_and_publish(session, bus, db.sessions)
    finally:
        await bus.stop()
        await db.dispose()


async def fan_out(
    bench: Bench,
    name: str,
    server: Proc,
    url: str,
    token: str | None,
    events: int,
    fire: Callable[[], Coroutine[Any, Any, None]],
) -> dict[str, Any]:
    sockets = bench.sizes.b5_sockets
    before = rss_kib(server.process.pid)
    receiver = start_json(
        f"b5-{name}-ws",
        "tests.perf.wsrecv",
        {"url": url, "sockets": sockets, "token": token, "expected": events, "idle_seconds": 15},
        log_dir=bench.log_dir,
    )
    read_ready_line(receiver, within=600)
    await asyncio.sleep(1)
    after = rss_kib(server.process.pid)
    await fire()
    got = finish_json(receiver)
    return {
        "sockets": sockets,
        "frames": got["frames"],
        "expected_frames": sockets * events,
        "seconds": got["seconds"],
        "frames_per_second": got["frames_per_second"],
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": (after - before) / sockets,
    }


async def scenario_b5(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    events = sizes.b5_events
    async with bench.database("b5") as database:
        workspace_id = await seed.seed_workspace(database.dsn)
        (agent,) = await seed.seed_agents(database.dsn, workspace_id, 1, capacity=1e9, mixed=False)
        with stopping([]) as procs:
            api = bench.start_service(
                "agent_api", bench.service_env(database, OMNI_WS_SEND_QUEUE_SIZE="1024"), procs
            )
            wait_http_ready(api)
            ours = await fan_out(
                bench,
                "agent_api",
                api,
                api.base_url.replace("http", "ws") + "/v1/ws",
                agent_token(agent, workspace_id),
                events,
                lambda: publish_events(database, bench.kafka, workspace_id, agent, events),
            )
            stop(api)
        with stopping([]) as procs:
            port = free_port()
            server = spawn(
                "broadcast",
                ["-m", "tests.perf.baselines", "broadcast", str(port)],
                env={},
                log_dir=bench.log_dir,
                port=port,
            )
            procs.append(server)
            wait_tcp(port)

            async def order() -> None:
                from websockets.asyncio.client import connect

                async with connect(f"ws://127.0.0.1:{port}/control") as control:
                    await control.send(json.dumps({"frames": events, "size": 600}))
                    await control.recv()

            theirs = await fan_out(
                bench, "broadcast", server, f"ws://127.0.0.1:{port}/", None, events, order
            )
    say(f"  B5: agent_api {ours}; broadcast {theirs}")
    ratio = ours["frames_per_second"] / theirs["frames_per_second"]
    memory_ratio = ours["kib_per_connection"] / max(theirs["kib_per_connection"], 0.001)
    return {
        "scenario": f"fan-out: {sizes.b5_sockets:,} agent WebSockets on one agent_api process, "
        f"{events} events each",
        "value": spread([ours["frames_per_second"]]),
        "unit": "frames/s",
        "baseline": spread([theirs["frames_per_second"]]),
        "baseline_name": "raw `websockets` broadcast server",
        "ratio": ratio,
        "memory_ratio": memory_ratio,
        "frames_missing": ours["expected_frames"] - ours["frames"],
        "target": "≥ 50 % of baseline frames/s; ≤ 2x its memory per connection",
        "holds": ratio >= 0.5 and memory_ratio <= 2 and ours["frames"] == ours["expected_frames"],
        "runs": [ours],
        "raw_runs": [theirs],
    }


# main --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
    }


async def run(bench: Bench, only: set[str]) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    started = time.monotonic()

    async def step(name: str, make: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> None:
        if name not in only:
            return
        say(f"{name} …")
        began = time.monotonic()
        try:
            scenarios[name] = await make()
        except Exception as exc:  # report the failure, go on with the others
            scenarios[name] = {"error": f"{type(exc).__name__}: {exc}", "holds": False}
            say(f"  {name} failed: {exc}")
        scenarios[name]["elapsed_seconds"] = time.monotonic() - began

    await step("B1", lambda: scenario_b1(bench))
    await step("B2", lambda: scenario_b2(bench))
    b2 = scenarios.get("B2", {}).get("value", {}).get("median", 2 * bench.b4_rate)
    await step("B4", lambda: scenario_b4(bench, b2))
    await step("B3", lambda: scenario_b3(bench))
    await step("B5", lambda: scenario_b5(bench))
    await step("B6", lambda: scenario_b6(bench))
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "smoke": bench.sizes is SMOKE,
        "sizes": bench.sizes.__dict__,
        "machine": machine(),
        "elapsed_seconds": time.monotonic() - started,
        "scenarios": scenarios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny loads; proves the harness")
    parser.add_argument("--runs", type=int, help="repetitions of each scenario")
    parser.add_argument("--only", default="B1,B2,B3,B4,B5,B6", help="scenarios to run")
    parser.add_argument(
        "--out", type=Path, default=PROJECT_ROOT / "tests" / "perf" / "results", help="results dir"
    )
    parser.add_argument(
        "--b4-rate", type=float, default=25.0, help="B4's rate when B2 is not run (msg/s)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--profile",
        default="",
        help="services to run under py-spy (e.g. router,ingest); flame graphs in the log dir",
    )
    args = parser.parse_args()
    raise_fd_limit()
    sizes = SMOKE if args.smoke else FULL
    if args.runs:
        sizes = Sizes(**{**sizes.__dict__, "runs": args.runs})
    log_dir = Path(tempfile.mkdtemp(prefix="omniroute-bench-"))
    bench = Bench(
        sizes=sizes,
        admin_url=os.environ.get("OMNI_BENCH_DATABASE_URL", ADMIN_URL_DEFAULT),
        kafka=os.environ.get("OMNI_BENCH_KAFKA_BOOTSTRAP_SERVERS", KAFKA_DEFAULT),
        log_dir=log_dir,
        profile=frozenset(filter(None, args.profile.split(","))),
        b4_rate=args.b4_rate,
    )
    say(f"omniroute bench {'(smoke) ' if args.smoke else ''}— logs in {log_dir}")
    report = asyncio.run(run(bench, set(args.only.split(","))))
    args.out.mkdir(parents=True, exist_ok=True)
    name = "smoke" if args.smoke else "latest"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    from tests.perf.report import render

    render(report, args.out, name=name, with_plots=not args.no_plots and not args.smoke)
    failed = [n for n, s in report["scenarios"].items() if "error" in s]
    if not failed and not bench.profile:
        shutil.rmtree(log_dir, ignore_errors=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
