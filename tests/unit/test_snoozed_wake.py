"""A customer's message wakes a snoozed conversation: back to its owner when the owner
can take it, otherwise routed as usual; the snooze timer is cancelled and the agent
gets the live frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from websockets.asyncio.client import ClientConnection, connect

from devmode.seed import DEMO_AGENTS, DEMO_PASSWORD
from services.agent_api.app import create_app
from services.router.maintenance import RoutingMaintenance
from services.router.snoozed import owner_refusal
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.db.models import (
    Agent,
    Assignment,
    Conversation,
    Message,
    Timer,
    TimerKind,
    utcnow,
)
from shared.db.session import Database
from shared.routing.engine import PolicyCache
from shared.routing.ranking import AgentState, Requirement
from shared.settings import Settings
from tests.conftest import served
from tests.unit.test_router import as_record, inbound

ADA, BEN = DEMO_AGENTS[0].email, DEMO_AGENTS[1].email
CHAT = "wcs_snoozer"


class Desk:
    def __init__(self, url: str, api: httpx.AsyncClient, database: Database, bus: MemoryBus):
        self.url = url
        self.api = api
        self.database = database
        self.bus = bus
        self.router = InboundRouter(database, bus, PolicyCache(ttl_seconds=0))
        self.tokens: dict[str, str] = {}

    async def token(self, email: str) -> str:
        if email not in self.tokens:
            response = await self.api.post(
                "/v1/auth/token",
                json={"workspace": "demo", "email": email, "password": DEMO_PASSWORD},
            )
            assert response.status_code == 200, response.text
            self.tokens[email] = response.json()["access_token"]
        return self.tokens[email]

    async def as_agent(self, email: str) -> dict[str, str]:
        return {"authorization": f"Bearer {await self.token(email)}"}

    async def set_status(self, email: str, status: str) -> None:
        response = await self.api.put(
            "/v1/me/status", json={"status": status}, headers=await self.as_agent(email)
        )
        assert response.status_code == 200, response.text

    async def customer_writes(self, workspace_id: uuid.UUID, text: str) -> None:
        provider_id = f"{CHAT}:{uuid.uuid4().hex[:8]}"
        await self.router.handle([as_record(inbound(workspace_id, CHAT, provider_id, text))])

    async def conversation(self) -> Conversation:
        async with self.database.sessions() as db:
            conversation = await db.scalar(
                select(Conversation).where(Conversation.thread_key == CHAT)
            )
        assert conversation is not None
        return conversation

    async def snooze(self, email: str) -> uuid.UUID:
        conversation = await self.conversation()
        until = (utcnow() + timedelta(hours=4)).isoformat()
        response = await self.api.post(
            f"/v1/conversations/{conversation.id}/snooze",
            json={"until": until},
            headers=await self.as_agent(email),
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "snoozed"
        return conversation.id

    async def pending_snooze_timers(self, conversation_id: uuid.UUID) -> int:
        async with self.database.sessions() as db:
            timers = await db.scalars(
                select(Timer).where(
                    Timer.conversation_id == conversation_id,
                    Timer.kind == TimerKind.SNOOZE_END.value,
                    Timer.fired_at.is_(None),
                    Timer.cancelled_at.is_(None),
                )
            )
            return len(list(timers))

    async def agent(self, email: str) -> Agent:
        async with self.database.sessions() as db:
            agent = await db.scalar(select(Agent).where(Agent.email == email))
        assert agent is not None
        return agent

    @contextlib.asynccontextmanager
    async def socket(self, email: str) -> AsyncIterator[ClientConnection]:
        ws_url = self.url.replace("http://", "ws://") + "/v1/ws"
        token = await self.token(email)
        async with connect(ws_url, subprotocols=["bearer", token]) as ws:  # type: ignore[list-item]
            assert json.loads(await ws.recv())["type"] == "ready"
            yield ws


async def frames_until(ws: ClientConnection, text: str) -> list[dict[str, Any]]:
    """Frames received up to and including the ``message.created`` of ``text``."""
    frames: list[dict[str, Any]] = []
    while not frames or (frames[-1]["type"], frames[-1]["data"].get("text")) != (
        "message.created",
        text,
    ):
        frames.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
    return frames


@pytest.fixture
async def desk(
    settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[Desk]:
    async with (
        served(create_app(settings, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as api,
    ):
        yield Desk(url, api, database, memory_bus)


async def test_the_owner_gets_the_woken_conversation_back_live(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.customer_writes(workspace_id, "Where is my parcel?")
    ada = await desk.agent(ADA)
    assert (await desk.conversation()).assignee_agent_id == ada.id
    conversation_id = await desk.snooze(ADA)
    assert await desk.pending_snooze_timers(conversation_id) == 1

    async with desk.socket(ADA) as ws:
        await desk.customer_writes(workspace_id, "Any news? It is urgent now.")
        frames = await frames_until(ws, "Any news? It is urgent now.")

    woken = await desk.conversation()
    assert (woken.status, woken.assignee_agent_id, woken.snoozed_until) == (
        "assigned",
        ada.id,
        None,
    )
    assert await desk.pending_snooze_timers(conversation_id) == 0
    status = next(f for f in frames if f["type"] == "conversation.status_changed")
    assert (status["data"]["status"], status["data"]["previous_status"]) == ("assigned", "snoozed")
    assert frames[-1]["data"]["assignee_agent_id"] == str(ada.id)
    assert (await desk.agent(ADA)).load_units == ada.load_units  # the same assignment


async def test_an_owner_who_went_offline_is_replaced_by_routing(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.customer_writes(workspace_id, "Where is my parcel?")
    ada = await desk.agent(ADA)
    conversation_id = await desk.snooze(ADA)
    await desk.set_status(ADA, "offline")
    await desk.set_status(BEN, "online")
    ben = await desk.agent(BEN)

    async with desk.socket(BEN) as ws:
        await desk.customer_writes(workspace_id, "Hello? Anyone?")
        frames = await frames_until(ws, "Hello? Anyone?")

    woken = await desk.conversation()
    assert (woken.status, woken.assignee_agent_id) == ("assigned", ben.id)
    assert await desk.pending_snooze_timers(conversation_id) == 0
    assert frames[-1]["data"]["assignee_agent_id"] == str(ben.id)
    assert "conversation.assigned" in [f["type"] for f in frames]
    assert (await desk.agent(ADA)).load_units == 0
    async with desk.database.sessions() as db:
        assignments = list(
            await db.scalars(
                select(Assignment)
                .where(Assignment.conversation_id == conversation_id)
                .order_by(Assignment.created_at)
            )
        )
        notes = list(
            await db.scalars(
                select(Message.text).where(
                    Message.conversation_id == conversation_id, Message.direction == "note"
                )
            )
        )
    assert [(a.agent_id, a.closed_reason) for a in assignments] == [
        (ada.id, "customer_wrote_while_snoozed"),
        (ben.id, None),
    ]
    assert any("status offline" in note for note in notes)


async def test_with_nobody_to_take_it_the_woken_conversation_waits_in_the_queue(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.customer_writes(workspace_id, "Where is my parcel?")
    conversation_id = await desk.snooze(ADA)
    await desk.set_status(ADA, "away")

    await desk.customer_writes(workspace_id, "Hello?")

    woken = await desk.conversation()
    assert (woken.status, woken.assignee_agent_id) == ("queued", None)
    assert woken.queued_at is not None
    assert await desk.pending_snooze_timers(conversation_id) == 0
    assert (await desk.agent(ADA)).load_units == 0


def test_the_owner_may_take_back_what_already_fills_their_capacity() -> None:
    requirement = Requirement(units=1.0, tier=1)
    full = AgentState(
        agent_id=uuid.uuid4(), status="online", tier=1, capacity_units=1.0, load_units=1.0
    )
    assert owner_refusal(full, requirement, held_units=1.0) is None
    assert owner_refusal(full, requirement, held_units=0.0) == "no free capacity"
    away = AgentState(
        agent_id=uuid.uuid4(), status="away", tier=1, capacity_units=3.0, load_units=1.0
    )
    assert owner_refusal(away, requirement, held_units=1.0) == "status away"
    assert owner_refusal(away, Requirement(units=1.0, tier=2), held_units=1.0) == "status away"
    tier1 = AgentState(
        agent_id=uuid.uuid4(), status="online", tier=1, capacity_units=3.0, load_units=1.0
    )
    assert owner_refusal(tier1, Requirement(units=1.0, tier=2), held_units=1.0) == (
        "tier 1 below required 2"
    )
    assert owner_refusal(None, requirement, held_units=1.0) is not None


async def test_the_snooze_timer_does_not_hand_it_back_to_an_owner_who_went_away(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.customer_writes(workspace_id, "Where is my parcel?")
    ada = await desk.agent(ADA)
    conversation_id = await desk.snooze(ADA)
    await desk.set_status(ADA, "offline")
    await desk.set_status(BEN, "online")
    ben = await desk.agent(BEN)
    async with desk.database.sessions() as db:
        await db.execute(
            update(Timer)
            .where(Timer.conversation_id == conversation_id, Timer.fired_at.is_(None))
            .values(due_at=utcnow() - timedelta(seconds=1))
        )
        await db.commit()

    await RoutingMaintenance(desk.database, desk.bus, PolicyCache(0), interval_seconds=1).tick()

    woken = await desk.conversation()
    assert (woken.status, woken.assignee_agent_id, woken.snoozed_until) == (
        "assigned",
        ben.id,
        None,
    )
    assert (await desk.agent(ADA)).load_units == 0
    assert ada.id != ben.id


async def test_the_snooze_timer_hands_it_back_to_an_owner_still_online(
    desk: Desk, workspace_id: uuid.UUID
) -> None:
    await desk.customer_writes(workspace_id, "Where is my parcel?")
    ada = await desk.agent(ADA)
    conversation_id = await desk.snooze(ADA)
    async with desk.database.sessions() as db:
        await db.execute(
            update(Timer)
            .where(Timer.conversation_id == conversation_id, Timer.fired_at.is_(None))
            .values(due_at=utcnow() - timedelta(seconds=1))
        )
        await db.commit()

    await RoutingMaintenance(desk.database, desk.bus, PolicyCache(0), interval_seconds=1).tick()

    woken = await desk.conversation()
    assert (woken.status, woken.assignee_agent_id) == ("assigned", ada.id)
    assert (await desk.agent(ADA)).load_units == ada.load_units
