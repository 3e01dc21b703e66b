"""A dev-mode style system for the browser: ingest, router and agent_api on the
in-process bus and one SQLite file, each served by uvicorn on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from devmode.seed import DEMO_PASSWORD, DEMO_WORKSPACE_SLUG, seed_demo
from services.agent_api.app import create_app as create_agent_api
from services.ingest.app import create_app as create_ingest
from services.router.app import create_app as create_router
from shared.bus.memory import MemoryBus
from shared.db.migrate import upgrade
from shared.db.session import Database
from shared.settings import Environment, Settings
from tests.browser.support import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import served


@dataclass(frozen=True)
class Stack:
    ingest: str
    api: str
    database: Database

    async def token(self, email: str) -> str:
        async with httpx.AsyncClient(base_url=self.api) as client:
            answer = await client.post(
                "/v1/auth/token",
                json={"workspace": DEMO_WORKSPACE_SLUG, "email": email, "password": DEMO_PASSWORD},
            )
            answer.raise_for_status()
            token: str = answer.json()["access_token"]
            return token


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'browser.db'}"
    await asyncio.to_thread(upgrade, url)
    database = Database(url)
    await seed_demo(database)
    settings = Settings(
        environment=Environment.TEST,
        database_url=url,
        kafka_bootstrap_servers="",
        smtp_listen_port=0,
        attachment_store_dir=tmp_path / "attachments",
        log_json=False,
    )
    bus = MemoryBus(partitions=settings.topic_partitions)
    await bus.start()
    try:
        async with (
            served(create_router(settings, bus=bus, database=database)),
            served(create_ingest(settings, bus=bus, database=database)) as ingest,
            served(create_agent_api(settings, bus=bus, database=database)) as api,
        ):
            yield Stack(ingest=ingest, api=api, database=database)
    finally:
        await bus.stop()
        await database.dispose()


@pytest.fixture
async def browser(stack: Stack) -> AsyncIterator[Browser]:
    """Headless Chromium; closed before the servers stop (it depends on ``stack``)."""
    del stack
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()
