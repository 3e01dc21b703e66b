"""Fixtures of the fault suite's fast part: every inbound surface of ingest in process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.bus.memory import MemoryBus
from shared.db.session import Database
from shared.settings import Settings
from tests.faults.channels import Ingest, add_accounts, serve_ingest


@pytest.fixture
async def accounts(
    database: Database, workspace_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> dict[str, uuid.UUID]:
    return await add_accounts(database, workspace_id, monkeypatch)


@pytest.fixture
async def ingest(
    settings: Settings,
    memory_bus: MemoryBus,
    database: Database,
    accounts: dict[str, uuid.UUID],
    tmp_path: Path,
) -> AsyncIterator[Ingest]:
    async for running in serve_ingest(settings, memory_bus, database, accounts, tmp_path):
        yield running
