"""Fixtures of the unit tests: the agent API served on SQLite and the in-process bus.
(Modules that need it served otherwise define their own ``api``.)"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.agent_api.app import create_app
from shared.bus.memory import MemoryBus
from shared.db.session import Database
from shared.settings import Settings
from tests.conftest import served


@pytest.fixture
async def api_url(
    settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[str]:
    async with served(create_app(settings, bus=memory_bus, database=database)) as url:
        yield url


@pytest.fixture
async def api(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url) as client:
        yield client
