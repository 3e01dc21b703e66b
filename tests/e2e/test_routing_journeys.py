"""Routing journeys on the real stack: queue, SLA escalation, absent owners."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devmode.seed import DEMO_AGENTS, seed_demo
from shared.db.session import Database
from tests.e2e.processes import ServiceProcess
from tests.e2e.routing_client import agent_online, customer_chat

pytestmark = pytest.mark.e2e

ADA, BEN, CY, SAM = (a.email for a in DEMO_AGENTS)

FAST_POLICY: dict[str, Any] = {
    "offline_grace_seconds": 1,
    "sla_targets": [{"seconds": 600}, {"seconds": 2, "tier": 1}],
    "queue_notices": {"min_interval_seconds": 0},
}


class Journey:
    def __init__(
        self, stack: dict[str, ServiceProcess], api: httpx.AsyncClient, ingest: httpx.AsyncClient
    ) -> None:
        self.api_url = stack["agent_api"].base_url
        self.ingest_url = stack["ingest"].base_url
        self.api = api
        self.ingest = ingest
        self.workspace = ""

    async def new_workspace(self, postgres_url: str, policy: dict[str, Any]) -> None:
        self.workspace = f"journey-{uuid.uuid4().hex[:8]}"
        database = Database(postgres_url)
        await seed_demo(database, slug=self.workspace)
        await database.dispose()
        sam = await self.api.post(
            "/v1/auth/token",
            json={"workspace": self.workspace, "email": SAM, "password": "omniroute-demo"},
        )
        auth = {"authorization": f"Bearer {sam.json()['access_token']}"}
        response = await self.api.put("/v1/routing/policy", json=policy, headers=auth)
        assert response.status_code == 200, response.text

    def agent(self, email: str, status: str = "online") -> Any:
        return agent_online(self.api, self.api_url, self.workspace, email, status=status)

    def customer(self) -> Any:
        return customer_chat(self.ingest, self.ingest_url, self.workspace)


@pytest.fixture
async def journey(stack: dict[str, ServiceProcess], postgres_url: str) -> AsyncIterator[Journey]:
    async with (
        httpx.AsyncClient(base_url=stack["agent_api"].base_url, timeout=30) as api,
        httpx.AsyncClient(base_url=stack["ingest"].base_url, timeout=30) as ingest,
    ):
        journey = Journey(stack, api, ingest)
        await journey.new_workspace(postgres_url, FAST_POLICY)
        yield journey


async def test_queued_while_everyone_is_offline_then_assigned_the_moment_an_agent_comes_online(
    journey: Journey,
) -> None:
    async with journey.agent(ADA, status="offline"), journey.customer() as kim:
        await kim.write("Is anybody there?")
        notice = await kim.told("in line")
        assert "number 1 in line" in notice["text"]

        async with journey.agent(BEN) as ben:
            assigned = await ben.assigned()
            assert assigned["data"]["reason"] == "queue"


async def test_an_sla_breach_escalates_tier_1_to_2_and_the_customer_hears_who_helps(
    journey: Journey,
) -> None:
    async with journey.agent(ADA) as ada, journey.agent(CY) as cy, journey.customer() as kim:
        await kim.write("My invoice is wrong")
        first = await ada.assigned()
        conversation_id = first["data"]["conversation_id"]

        # Nobody answers within tier 1's 2 s target.
        escalated = await cy.assigned(conversation_id)
        assert escalated["data"]["reason"] == "escalated_sla"
        await kim.told("tier 2")
        await kim.told("Cy (tier 2) will help you")
        unassigned = await ada.socket.wait_for(
            lambda f: f["type"] == "conversation.unassigned", what="unassigned"
        )
        assert unassigned["data"]["conversation_id"] == conversation_id


async def test_an_absent_owner_s_conversation_is_reassigned_after_the_grace_period(
    journey: Journey,
) -> None:
    # Answering stops the SLA clock, so only the owner's absence moves the conversation.
    async with journey.agent(ADA) as ada, journey.customer() as kim:
        await kim.write("Where is my parcel?")
        conversation_id = (await ada.assigned())["data"]["conversation_id"]
        reply = await journey.api.post(
            f"/v1/conversations/{conversation_id}/replies",
            json={"text": "Checking!"},
            headers=ada.auth,
        )
        assert reply.status_code == 201
        async with journey.agent(BEN) as ben:
            status = await journey.api.put(
                "/v1/me/status", json={"status": "offline"}, headers=ada.auth
            )
            assert status.status_code == 200
            moved = await ben.assigned(conversation_id)
            assert moved["data"]["reason"] == "owner_absent"
            await kim.told("Ben (tier 1) will help you")
