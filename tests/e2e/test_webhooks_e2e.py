"""Outgoing webhooks in both modes: the three services as processes on Kafka and
PostgreSQL (the fan-out in its own consumer group), and `make run`'s single process."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from devmode.seed import seed_demo
from shared.db.session import Database
from tests.conftest import free_port
from tests.e2e.processes import ServiceProcess, running, wait_ready
from tests.e2e.webhook_flow import admin_api_key, assert_signed_round_trip, webhook_round_trip

pytestmark = pytest.mark.e2e


async def test_webhooks_in_distributed_mode(
    stack: dict[str, ServiceProcess], postgres_url: str
) -> None:
    database = Database(postgres_url)
    workspace = f"e2e-hooks-{uuid.uuid4().hex[:8]}"
    await seed_demo(database, slug=workspace)
    key = await admin_api_key(database, workspace)
    await database.dispose()
    try:
        result = await webhook_round_trip(
            stack["ingest"].base_url, stack["agent_api"].base_url, workspace=workspace, api_key=key
        )
    except Exception:
        for service in stack.values():
            print(f"--- {service.name} ---\n{service.log_tail()}")  # noqa: T201
        raise
    assert_signed_round_trip(result)


async def test_webhooks_in_dev_mode(tmp_path: Path) -> None:
    ports = {"ingest": free_port(), "agent_api": free_port(), "router": free_port()}
    url = f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}"
    env = {
        "OMNI_DATABASE_URL": url,
        "OMNI_KAFKA_BOOTSTRAP_SERVERS": "",
        "OMNI_INGEST_PORT": str(ports["ingest"]),
        "OMNI_AGENT_API_PORT": str(ports["agent_api"]),
        "OMNI_ROUTER_PORT": str(ports["router"]),
        "OMNI_SMTP_LISTEN_PORT": "0",
        "OMNI_WEBHOOK_RETRY_BASE_SECONDS": "0.1",
        "OMNI_WEBHOOK_POLL_INTERVAL_SECONDS": "0.1",
    }
    with running("devmode", env=env, port=ports["agent_api"], log_dir=tmp_path) as devmode:
        wait_ready(devmode)
        database = Database(url)
        try:
            key = await admin_api_key(database, "demo")
        finally:
            await database.dispose()
        try:
            result = await webhook_round_trip(
                f"http://127.0.0.1:{ports['ingest']}",
                f"http://127.0.0.1:{ports['agent_api']}",
                workspace="demo",
                api_key=key,
            )
        except Exception:
            print(devmode.log_tail())  # noqa: T201
            raise
    assert_signed_round_trip(result)
