"""`make run`'s single process: the same journey on the in-process bus and SQLite."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.chat_flow import chat_round_trip
from tests.e2e.processes import running, wait_ready

pytestmark = pytest.mark.e2e


async def test_the_walkthrough_works_in_one_process(tmp_path: Path) -> None:
    ports = {"ingest": free_port(), "agent_api": free_port(), "router": free_port()}
    env = {
        "OMNI_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}",
        "OMNI_KAFKA_BOOTSTRAP_SERVERS": "",
        "OMNI_INGEST_PORT": str(ports["ingest"]),
        "OMNI_AGENT_API_PORT": str(ports["agent_api"]),
        "OMNI_ROUTER_PORT": str(ports["router"]),
        "OMNI_SMTP_LISTEN_PORT": str(free_port()),
    }
    with running("devmode", env=env, port=ports["agent_api"], log_dir=tmp_path) as devmode:
        wait_ready(devmode)
        result = await chat_round_trip(
            f"http://127.0.0.1:{ports['ingest']}",
            f"http://127.0.0.1:{ports['agent_api']}",
            workspace="demo",
        )
        walkthrough = devmode.log_path.read_text()
        async with httpx.AsyncClient() as client:
            console = await client.get(f"http://127.0.0.1:{ports['agent_api']}/console/wall")
            widget = await client.get(f"http://127.0.0.1:{ports['ingest']}/widget.js")

    assert result.customer_frames[0]["text"] == result.reply_text
    assert "omniroute is running" in walkthrough
    assert f"127.0.0.1:{ports['ingest']}/v1/webchat/demo/sessions" in walkthrough
    assert f"127.0.0.1:{ports['agent_api']}/console" in walkthrough
    assert f"127.0.0.1:{ports['ingest']}/widget/demo?workspace=demo" in walkthrough
    assert console.status_code == 200
    assert "wall.js" in console.text
    assert widget.status_code == 200
