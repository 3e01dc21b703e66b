"""`make run`'s single process: the same journey on the in-process bus and SQLite."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from devmode.seed import DEMO_PASSWORD, DEMO_WORKSPACE_SLUG
from tests.conftest import free_port
from tests.e2e.chat_flow import agent_token, chat_round_trip
from tests.e2e.processes import running, wait_ready

pytestmark = pytest.mark.e2e

SURVEY_LINK = re.compile(r"(https?://\S+/v1/surveys/[\w-]+\.[\w-]+)")


def devmode_env(database: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Free ports for dev mode's three services and its environment on them, with its
    SQLite file at ``database`` and the in-process bus."""
    ports = {"ingest": free_port(), "agent_api": free_port(), "router": free_port()}
    env = {
        "OMNI_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "OMNI_KAFKA_BOOTSTRAP_SERVERS": "",
        "OMNI_INGEST_PORT": str(ports["ingest"]),
        "OMNI_AGENT_API_PORT": str(ports["agent_api"]),
        "OMNI_ROUTER_PORT": str(ports["router"]),
        "OMNI_SMTP_LISTEN_PORT": str(free_port()),
    }
    return ports, env


async def test_the_walkthrough_works_in_one_process(tmp_path: Path) -> None:
    # A directory that does not exist yet, like `.omni/` in a fresh checkout.
    ports, env = devmode_env(tmp_path / "fresh" / "dev.db")
    with running("devmode", env=env, port=ports["agent_api"], log_dir=tmp_path) as devmode:
        wait_ready(devmode)
        result = await chat_round_trip(
            f"http://127.0.0.1:{ports['ingest']}",
            f"http://127.0.0.1:{ports['agent_api']}",
            workspace="demo",
        )
        walkthrough = devmode.log_path.read_text()
        api_url = f"http://127.0.0.1:{ports['agent_api']}"
        async with httpx.AsyncClient() as client:
            console = await client.get(f"{api_url}/console/wall")
            widget = await client.get(f"http://127.0.0.1:{ports['ingest']}/widget.js")
        # Surveys are on in dev mode: resolving the chat sends one whose link opens the
        # rating page on the agent_api URL dev mode printed.
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as api:
            ada = {"authorization": f"Bearer {await agent_token(api, 'demo')}"}
            path = f"/v1/conversations/{result.conversation_id}"
            resolved = await api.post(f"{path}/resolve", json={}, headers=ada)
            messages = (await api.get(f"{path}/messages", headers=ada)).json()
            links = [m for msg in messages for m in SURVEY_LINK.findall(msg["text"] or "")]
            assert len(links) == 1, messages
            rating_page = await client_get(links[0])
            rated = await api.post(links[0], json={"score": 4})
            sam = await api.post(
                "/v1/auth/token",
                json={
                    "workspace": DEMO_WORKSPACE_SLUG,
                    "email": "sam@demo.omniroute.dev",
                    "password": DEMO_PASSWORD,
                },
            )
            csat = await api.get(
                "/v1/analytics/csat",
                headers={"authorization": f"Bearer {sam.json()['access_token']}"},
            )

    assert result.customer_frames[0]["text"] == result.reply_text
    assert "omniroute is running" in walkthrough
    assert f"127.0.0.1:{ports['ingest']}/v1/webchat/demo/sessions" in walkthrough
    assert f"127.0.0.1:{ports['agent_api']}/console" in walkthrough
    assert f"127.0.0.1:{ports['ingest']}/widget/demo?workspace=demo" in walkthrough
    assert f"127.0.0.1:{ports['agent_api']}/v1/surveys/" in walkthrough
    assert console.status_code == 200
    assert "wall.js" in console.text
    assert widget.status_code == 200
    assert resolved.status_code == 200, resolved.text
    assert links[0].startswith(f"{api_url}/v1/surveys/")
    assert rating_page.status_code == 200
    assert "<form" in rating_page.text
    assert rated.status_code == 200, rated.text
    assert csat.json()["count"] == 1
    assert csat.json()["distribution"]["4"] == 1
    assert csat.json()["surveys_sent"] == csat.json()["surveys_answered"] == 1


def test_ctrl_c_stops_every_service_gracefully_without_a_traceback(tmp_path: Path) -> None:
    ports, env = devmode_env(tmp_path / "dev.db")
    with running("devmode", env=env, port=ports["agent_api"], log_dir=tmp_path) as devmode:
        wait_ready(devmode)
        devmode.process.send_signal(signal.SIGINT)
        try:
            returncode = devmode.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after Ctrl-C:\n{devmode.log_tail()}") from None
        output = devmode.log_path.read_text()

    assert returncode == 0, output
    assert "Traceback" not in output
    assert "KeyboardInterrupt" not in output
    # Each of the three servers ran its application's shutdown (consumers stopped).
    assert output.count("Application shutdown complete.") == 3, output


async def client_get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(url)
