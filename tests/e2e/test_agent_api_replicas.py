"""Two agent_api processes: an agent connected to one receives what the other produced."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from devmode.seed import DEMO_AGENTS, seed_demo
from shared.db.session import Database
from tests.conftest import free_port
from tests.e2e.conftest import FAST_ROUTING
from tests.e2e.processes import ServiceProcess, running, wait_ready
from tests.e2e.routing_client import agent_online, customer_chat

pytestmark = pytest.mark.e2e

ADA = DEMO_AGENTS[0].email


async def test_an_event_produced_via_one_replica_reaches_a_socket_on_another(
    stack: dict[str, ServiceProcess],
    postgres_url: str,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    workspace = f"replicas-{uuid.uuid4().hex[:8]}"
    database = Database(postgres_url)
    await seed_demo(database, slug=workspace)
    await database.dispose()
    port = free_port()
    env = {
        "OMNI_ENVIRONMENT": "test",
        "OMNI_DATABASE_URL": postgres_url,
        "OMNI_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "OMNI_AGENT_API_PORT": str(port),
        **FAST_ROUTING,
    }
    with running("services.agent_api", env=env, port=port, log_dir=tmp_path, name="api2") as api2:
        wait_ready(api2)
        first_url = stack["agent_api"].base_url
        async with (
            httpx.AsyncClient(base_url=first_url, timeout=30) as first,
            httpx.AsyncClient(base_url=api2.base_url, timeout=30) as second,
            httpx.AsyncClient(base_url=stack["ingest"].base_url, timeout=30) as ingest,
            # Ada's socket lives on the second replica ...
            agent_online(second, api2.base_url, workspace, ADA) as ada,
            customer_chat(ingest, stack["ingest"].base_url, workspace) as kim,
        ):
            await kim.write("Hello from the widget")
            assigned = await ada.assigned()
            conversation_id = assigned["data"]["conversation_id"]
            # ... while her reply goes through the first replica.
            reply = await first.post(
                f"/v1/conversations/{conversation_id}/replies",
                json={"text": "Answered via replica one"},
                headers=ada.auth,
            )
            assert reply.status_code == 201, reply.text
            echoed = await ada.socket.wait_for(
                lambda f: (
                    f["type"] == "message.created"
                    and f["data"]["text"] == "Answered via replica one"
                ),
                what="reply echo on replica two",
            )
            await kim.told("Answered via replica one")

    assert echoed["data"]["conversation_id"] == conversation_id
    events = [f for f in ada.socket.frames if f["type"] not in ("ready", "heartbeat")]
    seqs = [f["seq"] for f in events]
    assert seqs == sorted(seqs)
