"""Queues on PostgreSQL: depth, oldest wait and the next customer's estimated wait per
tier and per team, from the routing engine's estimate; other workspaces never count."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select, update

from shared.db.models import Agent, Team
from shared.db.session import Database
from shared.routing.policy import DEFAULT_POLICY
from shared.routing.ranking import estimate_wait_seconds
from tests.integration.test_api_agents import (
    CY,
    Desk,
    assert_problem,
    open_desk,
    queued_conversation,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def desk(pg_database: Database) -> AsyncIterator[Desk]:
    async with open_desk(pg_database) as opened:
        yield opened


async def billing_team(desk: Desk, workspace_id: uuid.UUID) -> uuid.UUID:
    async with desk.database.sessions() as session:
        team_id = await session.scalar(
            select(Team.id).where(Team.workspace_id == workspace_id, Team.name == "billing")
        )
    assert team_id is not None
    return team_id


async def test_depth_and_waits_per_tier_and_team(desk: Desk) -> None:
    a = desk.a.workspace_id
    billing = await billing_team(desk, a)
    await queued_conversation(desk.database, a, tier=1, waiting_seconds=120)
    await queued_conversation(desk.database, a, tier=1, waiting_seconds=30, channel="email")
    await queued_conversation(desk.database, a, tier=2, waiting_seconds=60)
    await queued_conversation(desk.database, a, tier=2, team_id=billing, waiting_seconds=600)
    for _ in range(3):  # someone else's queue must not count
        await queued_conversation(desk.database, desk.b.workspace_id, tier=1, waiting_seconds=900)

    for who in ("agent", "supervisor", "admin_key"):
        response = await desk.call(who, "GET", "/v1/queues")
        assert response.status_code == 200, response.text
    overview = response.json()
    tiers = {q["tier"]: q for q in overview["tiers"]}
    [team] = overview["teams"]
    handle = DEFAULT_POLICY.default_handle_seconds
    assert overview["average_handle_seconds"] == handle

    # Tier 1: two waiting (webchat 1 unit, email 0.5); Ada (tier 1, capacity 3) is online.
    assert (tiers[1]["depth"], tiers[1]["online_agents"]) == (2, 1)
    assert 119 <= tiers[1]["oldest_wait_seconds"] < 140
    expected = estimate_wait_seconds(
        3, serving_agents=1, concurrency=3.0 / 0.75, avg_handle_seconds=handle
    )
    assert tiers[1]["estimated_wait_seconds"] == pytest.approx(expected)
    # Tier 2: nobody online at tier 2 or above; the team conversation counts for the team.
    assert (tiers[2]["depth"], tiers[2]["online_agents"]) == (1, 0)
    assert tiers[2]["estimated_wait_seconds"] is None
    assert (tiers[3]["depth"], tiers[3]["oldest_wait_seconds"]) == (0, None)
    assert (team["name"], team["team_id"], team["depth"]) == ("billing", str(billing), 1)
    assert 599 <= team["oldest_wait_seconds"] < 620
    assert team["estimated_wait_seconds"] is None

    async with desk.database.sessions() as session:
        await session.execute(
            update(Agent).where(Agent.id == desk.a.agent_ids[CY]).values(status="online")
        )
        await session.commit()
    later: dict[str, Any] = (await desk.call("agent", "GET", "/v1/queues")).json()
    tier2 = next(q for q in later["tiers"] if q["tier"] == 2)
    assert tier2["online_agents"] == 1
    assert tier2["estimated_wait_seconds"] == pytest.approx(
        estimate_wait_seconds(2, serving_agents=1, concurrency=3.0, avg_handle_seconds=handle)
    )
    assert later["teams"][0]["online_agents"] == 1
    assert later["teams"][0]["estimated_wait_seconds"] is not None


async def test_an_empty_workspace_has_empty_queues_and_strangers_get_401(desk: Desk) -> None:
    await queued_conversation(desk.database, desk.a.workspace_id, waiting_seconds=10)
    response = await desk.client.get("/v1/queues", headers=desk.b.headers["supervisor"])
    assert response.status_code == 200
    overview = response.json()
    assert [q["depth"] for q in overview["tiers"]] == [0, 0, 0]
    assert [q["depth"] for q in overview["teams"]] == [0]
    assert overview["tiers"][0]["estimated_wait_seconds"] == pytest.approx(
        estimate_wait_seconds(
            1,
            serving_agents=1,
            concurrency=3.0,
            avg_handle_seconds=DEFAULT_POLICY.default_handle_seconds,
        )
    )
    assert_problem(await desk.client.get("/v1/queues"), 401)
    assert_problem(
        await desk.client.get("/v1/queues", headers={"authorization": "Bearer nope"}), 401
    )
