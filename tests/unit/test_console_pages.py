"""The console, the wall and the chat widget are served with their security headers;
the widget's demo page takes only a workspace slug."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.agent_api.app import create_app as create_agent_api
from services.ingest.app import create_app as create_ingest
from shared.bus.memory import MemoryBus
from shared.db.session import Database
from shared.settings import Settings
from tests.conftest import served


@pytest.fixture
async def agent_api(
    settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[httpx.AsyncClient]:
    del workspace_id
    async with (
        served(create_agent_api(settings, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield client


@pytest.fixture
async def ingest(
    settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[httpx.AsyncClient]:
    del workspace_id
    quiet = settings.model_copy(update={"smtp_listen_port": 0})
    async with (
        served(create_ingest(quiet, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield client


@pytest.mark.parametrize(
    ("path", "script"), [("/console", "console.js"), ("/console/wall", "wall.js")]
)
async def test_console_pages_run_only_their_own_scripts(
    agent_api: httpx.AsyncClient, path: str, script: str
) -> None:
    page = await agent_api.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert f'src="/console/assets/{script}"' in page.text
    asset = await agent_api.get(f"/console/assets/{script}")
    assert asset.status_code == 200
    assert "javascript" in asset.headers["content-type"]


async def test_console_assets_stay_inside_their_folder(agent_api: httpx.AsyncClient) -> None:
    escape = await agent_api.get("/console/assets/..%2Fendpoints.py")
    assert escape.status_code == 404


async def test_widget_script_and_chat_page(ingest: httpx.AsyncClient) -> None:
    script = await ingest.get("/widget.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["cross-origin-resource-policy"] == "cross-origin"
    assert "data-omniroute" in script.text

    chat = await ingest.get("/widget/chat", params={"workspace": "demo"})
    assert chat.status_code == 200
    policy = chat.headers["content-security-policy"]
    assert "connect-src 'self'" in policy
    # Only the workspace's allowed sites may frame it; none saved (not dev mode): ingest's own.
    assert policy.endswith("; frame-ancestors 'self'")


async def test_widget_demo_page_embeds_the_workspace_and_refuses_odd_slugs(
    ingest: httpx.AsyncClient,
) -> None:
    demo = await ingest.get("/widget/demo", params={"workspace": "demo"})
    assert demo.status_code == 200
    assert '<script src="/widget.js" data-workspace="demo" async></script>' in demo.text

    odd = await ingest.get("/widget/demo", params={"workspace": '"><script>x</script>'})
    assert odd.status_code == 422
    assert odd.headers["content-type"].startswith("application/problem+json")
