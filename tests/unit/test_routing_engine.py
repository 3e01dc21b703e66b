"""The routing engine end to end in one process: SQLite, the in-process bus, real HTTP.

Time is advanced by moving a timer's due time into the past, never by sleeping.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from devmode.seed import DEMO_AGENTS, DEMO_PASSWORD
from services.agent_api.app import create_app
from services.router.maintenance import RoutingMaintenance
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.db.models import Agent, AgentStatus, Conversation, Timer, TimerKind, utcnow
from shared.db.session import Database
from shared.events import (
    ConversationEscalated,
    Event,
    OutboundMessageRequested,
    SupervisorAlert,
    Topic,
    decode_event,
)
from shared.routing.engine import PolicyCache
from shared.routing.policy import WEEKDAYS
from shared.settings import Settings
from tests.conftest import served
from tests.unit.test_router import as_record, inbound

ADA, BEN, CY, SAM = (a.email for a in DEMO_AGENTS)


class Desk:
    """The agent API over HTTP plus the router's handlers, on one database and bus."""

    def __init__(self, api: httpx.AsyncClient, database: Database, bus: MemoryBus) -> None:
        self.api = api
        self.database = database
        self.bus = bus
        self.policies = PolicyCache(ttl_seconds=0)
        self.router = InboundRouter(database, bus, self.policies)
        self.maintenance = RoutingMaintenance(database, bus, self.policies, interval_seconds=1)
        self.tokens: dict[str, dict[str, str]] = {}

    async def auth(self, email: str) -> dict[str, str]:
        if email not in self.tokens:
            response = await self.api.post(
                "/v1/auth/token",
                json={"workspace": "demo", "email": email, "password": DEMO_PASSWORD},
            )
            self.tokens[email] = {"authorization": f"Bearer {response.json()['access_token']}"}
        return self.tokens[email]

    async def set_status(self, email: str, status: str) -> None:
        response = await self.api.put(
            "/v1/me/status", json={"status": status}, headers=await self.auth(email)
        )
        assert response.status_code == 200, response.text

    async def customer_writes(self, workspace_id: uuid.UUID, session: str, text: str) -> None:
        provider_id = f"{session}:{uuid.uuid4().hex[:6]}"
        await self.router.handle([as_record(inbound(workspace_id, session, provider_id, text))])

    async def conversation(self, session: str) -> Conversation:
        async with self.database.sessions() as db:
            conversation = await db.scalar(
                select(Conversation).where(Conversation.thread_key == session)
            )
        assert conversation is not None
        return conversation

    async def owner_email(self, session: str) -> str | None:
        conversation = await self.conversation(session)
        if conversation.assignee_agent_id is None:
            return None
        async with self.database.sessions() as db:
            email: str | None = await db.scalar(
                select(Agent.email).where(Agent.id == conversation.assignee_agent_id)
            )
        return email

    async def load(self, email: str) -> float:
        async with self.database.sessions() as db:
            load = await db.scalar(select(Agent.load_units).where(Agent.email == email))
        return float(load or 0)

    async def time_passes(self, kind: TimerKind) -> None:
        """Make every pending timer of ``kind`` due, then let the router work."""
        async with self.database.sessions() as db:
            await db.execute(
                update(Timer)
                .where(Timer.kind == kind.value, Timer.fired_at.is_(None))
                .values(due_at=utcnow() - timedelta(seconds=1))
            )
            await db.commit()
        await self.maintenance.tick()

    def customer_texts(self, session: str) -> list[str]:
        out = []
        for record in self.bus.records(Topic.OUTBOUND.value):
            data = decode_event(record).data
            if isinstance(data, OutboundMessageRequested) and data.recipient_address == session:
                out.append(data.text)
        return out

    def events(self, kind: type[Any]) -> list[Event]:
        events = [decode_event(r) for r in self.bus.records(Topic.EVENTS.value)]
        return [e for e in events if isinstance(e.data, kind)]

    async def put_policy(self, document: dict[str, Any]) -> httpx.Response:
        return await self.api.put("/v1/routing/policy", json=document, headers=await self.auth(SAM))


@pytest.fixture
async def desk(
    settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[Desk]:
    async with (
        served(create_app(settings, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as api,
    ):
        yield Desk(api, database, memory_bus)


async def test_queued_while_everyone_is_offline_then_assigned_when_an_agent_comes_online(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.set_status(ADA, "offline")
    await desk.customer_writes(workspace_id, "wcs_q", "hello?")
    await desk.maintenance.tick()

    assert (await desk.conversation("wcs_q")).status == "queued"
    [notice] = desk.customer_texts("wcs_q")
    assert "number 1 in line" in notice
    assert "unknown" in notice  # nobody online: no estimate is invented

    await desk.set_status(BEN, "online")

    assert await desk.owner_email("wcs_q") == BEN
    assert await desk.load(BEN) == 1.0


async def test_the_latest_decision_is_the_queueing_then_the_assignment_that_followed(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.set_status(ADA, "offline")
    await desk.customer_writes(workspace_id, "wcs_d", "hello?")
    conversation = await desk.conversation("wcs_d")
    url = f"/v1/conversations/{conversation.id}/routing"

    queued = (await desk.api.get(url, headers=await desk.auth(SAM))).json()
    await desk.set_status(BEN, "online")
    assigned = (await desk.api.get(url, headers=await desk.auth(SAM))).json()

    assert queued["latest_decision"]["rule"] == "queued_no_eligible_agent"
    assert queued["assignments"] == []
    [assignment] = assigned["assignments"]
    assert assigned["latest_decision"] == assignment["explanation"]
    assert assigned["latest_decision"]["chosen_agent_id"] == assignment["agent_id"]


async def test_queue_notices_are_throttled_and_repeat_only_on_material_change(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.set_status(ADA, "offline")
    for i in range(3):
        await desk.customer_writes(workspace_id, f"wcs_{i}", "hi")
    await desk.maintenance.tick()
    await desk.maintenance.tick()

    assert [len(desk.customer_texts(f"wcs_{i}")) for i in range(3)] == [1, 1, 1]
    assert "number 3 in line" in desk.customer_texts("wcs_2")[0]


async def test_an_absent_owner_s_conversations_move_on_after_the_grace_period(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.customer_writes(workspace_id, "wcs_o", "my parcel")
    assert await desk.owner_email("wcs_o") == ADA
    await desk.set_status(BEN, "online")

    await desk.set_status(ADA, "away")
    await desk.maintenance.tick()
    assert await desk.owner_email("wcs_o") == ADA  # still within the grace period

    await desk.time_passes(TimerKind.OWNER_OFFLINE_GRACE)

    assert await desk.owner_email("wcs_o") == BEN
    assert await desk.load(ADA) == 0.0
    assert any("Ben (tier 1) will help you" in t for t in desk.customer_texts("wcs_o"))


async def test_coming_back_within_the_grace_period_keeps_the_conversations(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.customer_writes(workspace_id, "wcs_b", "hi")
    await desk.set_status(BEN, "online")
    await desk.set_status(ADA, "offline")
    await desk.set_status(ADA, "online")

    await desk.time_passes(TimerKind.OWNER_OFFLINE_GRACE)

    assert await desk.owner_email("wcs_b") == ADA


async def test_an_sla_breach_escalates_tier_1_to_2_and_tells_the_customer(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.set_status(CY, "online")
    await desk.customer_writes(workspace_id, "wcs_s", "nobody answers")
    assert await desk.owner_email("wcs_s") == ADA

    await desk.time_passes(TimerKind.SLA_FIRST_RESPONSE)

    conversation = await desk.conversation("wcs_s")
    assert conversation.tier == 2
    assert await desk.owner_email("wcs_s") == CY
    assert await desk.load(ADA) == 0.0
    texts = desk.customer_texts("wcs_s")
    assert any("tier 2" in t for t in texts)
    assert any("Cy (tier 2) will help you" in t for t in texts)
    [escalated] = desk.events(ConversationEscalated)
    assert escalated.data.trigger == "sla"  # type: ignore[attr-defined]
    messages = await desk.api.get(
        f"/v1/conversations/{conversation.id}/messages", headers=await desk.auth(CY)
    )
    notes = [m["text"] for m in messages.json() if m["direction"] == "note"]
    assert notes == [
        "Escalated from tier 1 to tier 2 (sla): no first response within the tier 1 target"
    ]
    assert not any("Escalated from" in t for t in desk.customer_texts("wcs_s"))


async def test_an_answered_conversation_does_not_escalate(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.set_status(CY, "online")
    await desk.customer_writes(workspace_id, "wcs_a", "hi")
    conversation = await desk.conversation("wcs_a")
    reply = await desk.api.post(
        f"/v1/conversations/{conversation.id}/replies",
        json={"text": "Hello!"},
        headers=await desk.auth(ADA),
    )
    assert reply.status_code == 201

    await desk.time_passes(TimerKind.SLA_FIRST_RESPONSE)

    assert (await desk.conversation("wcs_a")).tier == 1
    assert await desk.owner_email("wcs_a") == ADA


async def test_the_top_tier_raises_a_supervisor_alert(desk: Desk, workspace_id: uuid.UUID) -> None:
    await desk.customer_writes(workspace_id, "wcs_t", "hi")
    async with desk.database.sessions() as db:
        await db.execute(update(Conversation).values(tier=3))
        await db.commit()

    await desk.time_passes(TimerKind.SLA_FIRST_RESPONSE)

    [alert] = desk.events(SupervisorAlert)
    assert alert.data.kind == "top_tier_exhausted"  # type: ignore[attr-defined]


async def test_manual_escalation_with_reason_and_to_a_team(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.set_status(CY, "online")
    await desk.customer_writes(workspace_id, "wcs_m", "my invoice is wrong")
    conversation = await desk.conversation("wcs_m")
    url = f"/v1/conversations/{conversation.id}/escalations"

    no_reason = await desk.api.post(url, json={}, headers=await desk.auth(ADA))
    unknown_team = await desk.api.post(
        url, json={"reason": "billing", "team": "nope"}, headers=await desk.auth(ADA)
    )
    not_owner = await desk.api.post(url, json={"reason": "x"}, headers=await desk.auth(BEN))
    escalated = await desk.api.post(
        url, json={"reason": "needs billing", "team": "billing"}, headers=await desk.auth(ADA)
    )

    assert no_reason.status_code == 422
    assert unknown_team.status_code == 422
    assert not_owner.status_code == 403
    assert escalated.status_code == 200, escalated.text
    assert escalated.json()["new_owner_agent_id"] is not None
    assert await desk.owner_email("wcs_m") == CY
    routing = await desk.api.get(
        f"/v1/conversations/{conversation.id}/routing", headers=await desk.auth(SAM)
    )
    assignments = routing.json()["assignments"]
    assert [a["closed_reason"] for a in assignments] == ["escalated_agent", None]
    assert assignments[1]["explanation"]["requirement"]["team_id"] is not None


async def test_an_invalid_policy_is_refused_naming_the_field_and_nothing_changes(
    desk: Desk,
) -> None:
    refused = await desk.put_policy(
        {"intake_rules": [{"name": "x", "when": {"sentiment_below": 7}, "then": {}}]}
    )
    agent_refused = await desk.api.put("/v1/routing/policy", json={}, headers=await desk.auth(ADA))
    current = await desk.api.get("/v1/routing/policy", headers=await desk.auth(ADA))

    assert refused.status_code == 422
    assert "intake_rules.0.when.sentiment_below" in refused.json()["detail"]
    assert agent_refused.status_code == 403
    assert current.json()["version"] == 0


async def test_a_new_policy_applies_without_restart(desk: Desk, workspace_id: uuid.UUID) -> None:
    await desk.set_status(CY, "online")
    accepted = await desk.put_policy(
        {
            "intake_rules": [
                {
                    "name": "refunds to billing",
                    "when": {"keywords_any": ["refund"]},
                    "then": {"tier": 2, "team": "billing", "priority": 5},
                }
            ]
        }
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["version"] == 1

    await desk.customer_writes(workspace_id, "wcs_r", "I want a REFUND please")

    conversation = await desk.conversation("wcs_r")
    assert (conversation.tier, conversation.priority) == (2, 5)
    assert conversation.intake is not None
    assert conversation.intake["matched_rules"] == ["refunds to billing"]
    assert await desk.owner_email("wcs_r") == CY
    versions = await desk.api.get("/v1/routing/policy/versions", headers=await desk.auth(SAM))
    assert [v["version"] for v in versions.json()] == [1]


async def test_outside_business_hours_the_customer_gets_the_hours(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    tomorrow = WEEKDAYS[(utcnow().weekday() + 1) % 7]
    open_tomorrow_only: dict[str, Any] = {
        "business_hours": {
            "timezone": "UTC",
            "weekly": {tomorrow: [{"start": "00:00", "end": "24:00"}]},
        }
    }
    assert (await desk.put_policy(open_tomorrow_only)).status_code == 200

    await desk.customer_writes(workspace_id, "wcs_h", "anyone there?")

    assert any("We're closed right now" in t for t in desk.customer_texts("wcs_h"))


async def test_the_previous_agent_is_sticky_across_conversations(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.customer_writes(workspace_id, "wcs_x", "first")
    assert await desk.owner_email("wcs_x") == ADA
    async with desk.database.sessions() as db:
        # The customer's first conversation ends; Ada is busier than Ben now.
        await db.execute(update(Conversation).values(status="resolved"))
        await db.execute(update(Agent).where(Agent.email == ADA).values(load_units=2.0))
        await db.execute(
            update(Agent).where(Agent.email == BEN).values(status=AgentStatus.ONLINE.value)
        )
        await db.commit()

    await desk.customer_writes(workspace_id, "wcs_x", "back again")

    async with desk.database.sessions() as db:
        newest = await db.scalar(
            select(Conversation)
            .where(Conversation.status != "resolved")
            .order_by(Conversation.created_at.desc())
        )
    assert newest is not None
    routing = await desk.api.get(
        f"/v1/conversations/{newest.id}/routing", headers=await desk.auth(SAM)
    )
    assert routing.json()["latest_decision"]["rule"] == "sticky_owner"
