"""Router maintenance on PostgreSQL (SKIP LOCKED claims, the put-back, the one-open-
assignment index): a failing timer is put back while the timers behind it fire, and a
queued conversation that still has an open assignment (what the schema tests write
directly) does not hold up its workspace's queue."""

from __future__ import annotations

import uuid

import pytest

from services.router.maintenance import RoutingMaintenance
from shared.bus.memory import MemoryBus
from shared.db.session import Database
from shared.routing.engine import PolicyCache
from tests.unit.test_routing_maintenance import (
    a_failing_timer_is_put_back_and_the_timers_behind_it_fire,
    a_queued_conversation_that_still_has_an_open_assignment_is_skipped,
    new_workspace,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def maintenance(pg_database: Database) -> RoutingMaintenance:
    return RoutingMaintenance(pg_database, MemoryBus(), PolicyCache(0), interval_seconds=1)


@pytest.fixture
async def pg_workspace_id(pg_database: Database) -> uuid.UUID:
    return await new_workspace(pg_database)


async def test_a_failing_timer_is_put_back_on_postgres(
    pg_database: Database,
    maintenance: RoutingMaintenance,
    pg_workspace_id: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await a_failing_timer_is_put_back_and_the_timers_behind_it_fire(
        pg_database, maintenance, pg_workspace_id, monkeypatch
    )


async def test_a_queued_conversation_with_an_open_assignment_is_skipped_on_postgres(
    pg_database: Database, maintenance: RoutingMaintenance, pg_workspace_id: uuid.UUID
) -> None:
    await a_queued_conversation_that_still_has_an_open_assignment_is_skipped(
        pg_database, maintenance, pg_workspace_id
    )
