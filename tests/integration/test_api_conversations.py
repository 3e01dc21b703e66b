"""Conversation endpoints on PostgreSQL: happy paths, permissions, other workspaces."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from devmode.seed import DEMO_AGENTS, DEMO_PASSWORD, seed_demo
from services.agent_api.app import create_app
from services.router.maintenance import RoutingMaintenance
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.db.models import Agent, OutcomeCode, Timer, TimerKind, utcnow
from shared.db.session import Database
from shared.events import (
    AgentMentioned,
    ConsultationRequested,
    OutboundMessageRequested,
    Topic,
    decode_event,
)
from shared.routing.engine import PolicyCache
from shared.settings import Environment, Settings
from tests.conftest import served
from tests.unit.test_router import as_record, inbound

pytestmark = pytest.mark.integration

ADA, BEN, CY, SAM = (a.email for a in DEMO_AGENTS)


class Api:
    def __init__(
        self, client: httpx.AsyncClient, database: Database, bus: MemoryBus, workspace: str
    ) -> None:
        self.client = client
        self.database = database
        self.bus = bus
        self.workspace = workspace
        self.workspace_id = uuid.UUID(int=0)
        self._auth: dict[str, dict[str, str]] = {}
        self.router = InboundRouter(database, bus, PolicyCache(ttl_seconds=0))

    async def auth(self, email: str, workspace: str | None = None) -> dict[str, str]:
        key = f"{workspace or self.workspace}/{email}"
        if key not in self._auth:
            response = await self.client.post(
                "/v1/auth/token",
                json={
                    "workspace": workspace or self.workspace,
                    "email": email,
                    "password": DEMO_PASSWORD,
                },
            )
            assert response.status_code == 200, response.text
            self._auth[key] = {"authorization": f"Bearer {response.json()['access_token']}"}
        return self._auth[key]

    async def as_(self, email: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, path, headers=await self.auth(email), **kwargs)

    async def agent_id(self, email: str) -> uuid.UUID:
        async with self.database.sessions() as session:
            agent_id = await session.scalar(
                select(Agent.id).where(
                    Agent.workspace_id == self.workspace_id, Agent.email == email
                )
            )
        assert agent_id is not None
        return agent_id

    async def customer_writes(self, session_id: str, text: str) -> str:
        provider = f"{session_id}:{uuid.uuid4().hex[:8]}"
        await self.router.handle(
            [as_record(inbound(self.workspace_id, session_id, provider, text))]
        )
        response = await self.as_(SAM, "GET", "/v1/conversations", params={"q": text})
        [item] = response.json()["items"]
        return str(item["id"])

    def events(self, kind: type[Any]) -> list[Any]:
        decoded = [decode_event(r).data for r in self.bus.records(Topic.EVENTS.value)]
        return [d for d in decoded if isinstance(d, kind)]

    def customer_texts(self) -> list[str]:
        decoded = [decode_event(r).data for r in self.bus.records(Topic.OUTBOUND.value)]
        return [d.text for d in decoded if isinstance(d, OutboundMessageRequested)]


@pytest.fixture
async def api(pg_database: Database) -> AsyncIterator[Api]:
    workspace = f"conv-{uuid.uuid4().hex[:8]}"
    workspace_id = await seed_demo(pg_database, slug=workspace)
    bus = MemoryBus()
    settings = Settings(environment=Environment.TEST, database_url=pg_database.url)
    async with (
        served(create_app(settings, bus=bus, database=pg_database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        result = Api(client, pg_database, bus, workspace)
        result.workspace_id = workspace_id
        yield result


async def test_listing_filters_sorts_searches_and_pages(api: Api) -> None:
    first = await api.customer_writes("wcs_l1", f"parcel {uuid.uuid4().hex[:6]}")
    await api.as_(ADA, "PUT", "/v1/me/status", json={"status": "offline"})
    second = await api.customer_writes("wcs_l2", f"invoice {uuid.uuid4().hex[:6]}")

    mine = await api.as_(ADA, "GET", "/v1/conversations", params={"assignee": "me"})
    queued = await api.as_(SAM, "GET", "/v1/conversations", params={"assignee": "none"})
    by_status = await api.as_(SAM, "GET", "/v1/conversations", params={"status": "queued"})
    search = await api.as_(SAM, "GET", "/v1/conversations", params={"q": "INVOICE"})
    oldest_first = await api.as_(
        SAM, "GET", "/v1/conversations", params={"sort": "created_at", "order": "asc"}
    )
    page1 = await api.as_(SAM, "GET", "/v1/conversations", params={"limit": 1})
    page2 = await api.as_(
        SAM, "GET", "/v1/conversations", params={"limit": 1, "cursor": page1.json()["next_cursor"]}
    )
    bad_assignee = await api.as_(SAM, "GET", "/v1/conversations", params={"assignee": "x"})
    bad_order = await api.as_(SAM, "GET", "/v1/conversations", params={"order": "sideways"})

    assert [c["id"] for c in mine.json()["items"]] == [first]
    assert [c["id"] for c in queued.json()["items"]] == [second]
    assert [c["id"] for c in by_status.json()["items"]] == [second]
    assert [c["id"] for c in search.json()["items"]] == [second]
    assert [c["id"] for c in oldest_first.json()["items"]] == [first, second]
    assert [c["id"] for c in page1.json()["items"] + page2.json()["items"]] == [second, first]
    assert page2.json()["next_cursor"] is None
    assert bad_assignee.status_code == 422
    assert bad_order.status_code == 422


async def test_notes_mentions_and_consultations(api: Api) -> None:
    conversation = await api.customer_writes("wcs_n", "help with my refund")
    ben_id = await api.agent_id(BEN)
    path = f"/v1/conversations/{conversation}"

    note = await api.as_(ADA, "POST", f"{path}/notes", json={"text": f"@{CY} can you look?"})
    stranger = await api.as_(BEN, "POST", f"{path}/notes", json={"text": "not mine"})
    consult = await api.as_(
        ADA,
        "POST",
        f"{path}/consultations",
        json={"note": "Refund rules?", "agent_id": str(ben_id)},
    )
    consultant_note = await api.as_(BEN, "POST", f"{path}/notes", json={"text": "Use policy B"})
    consultant_reply = await api.as_(BEN, "POST", f"{path}/replies", json={"text": "Hi!"})
    neither = await api.as_(ADA, "POST", f"{path}/consultations", json={"note": "x"})
    closed = await api.as_(BEN, "DELETE", f"{path}/consultations")
    after_close = await api.as_(BEN, "POST", f"{path}/notes", json={"text": "one more"})
    detail = await api.as_(ADA, "GET", path)

    assert note.status_code == 201
    assert note.json()["mentions"] == [str(await api.agent_id(CY))]
    assert stranger.status_code == 403
    assert consult.status_code == 201, consult.text
    assert consultant_note.status_code == 201
    assert consultant_reply.status_code == 403
    assert neither.status_code == 422
    assert closed.status_code == 204
    assert after_close.status_code == 403
    assert detail.json()["assignee_agent_id"] == str(await api.agent_id(ADA))
    [mention_cy, mention_ben] = api.events(AgentMentioned)
    assert mention_cy.mentioned_agent_ids == [await api.agent_id(CY)]
    assert mention_ben.mentioned_agent_ids == [ben_id]
    [requested] = api.events(ConsultationRequested)
    assert requested.consultant_agent_ids == [ben_id]
    assert not any("policy B" in t for t in api.customer_texts())


async def test_transfers_to_an_agent_a_team_or_a_tier(api: Api) -> None:
    conversation = await api.customer_writes("wcs_t", "transfer me")
    path = f"/v1/conversations/{conversation}/transfers"
    ben_id = await api.agent_id(BEN)

    offline = await api.as_(ADA, "POST", path, json={"reason": "x", "agent_id": str(ben_id)})
    await api.as_(BEN, "PUT", "/v1/me/status", json={"status": "online"})
    not_owner = await api.as_(BEN, "POST", path, json={"reason": "x", "tier": 2})
    two_targets = await api.as_(ADA, "POST", path, json={"reason": "x", "tier": 2, "team": "b"})
    to_ben = await api.as_(
        ADA, "POST", path, json={"reason": "Ben knows this customer", "agent_id": str(ben_id)}
    )
    to_team = await api.as_(BEN, "POST", path, json={"reason": "billing", "team": "billing"})
    to_tier = await api.as_(SAM, "POST", path, json={"reason": "back to tier 1", "tier": 1})

    assert offline.status_code == 409
    assert not_owner.status_code == 403
    assert two_targets.status_code == 422
    assert to_ben.status_code == 200, to_ben.text
    assert to_ben.json()["new_owner_agent_id"] == str(ben_id)
    assert to_team.status_code == 200
    assert to_team.json()["conversation"]["status"] == "queued"  # Cy (billing) is offline
    assert to_tier.status_code == 200
    assert any("Ben (tier 1) will help you" in t for t in api.customer_texts())
    routing = await api.as_(SAM, "GET", f"/v1/conversations/{conversation}/routing")
    assert [a["closed_reason"] for a in routing.json()["assignments"]][:2] == [
        "transferred",
        "transferred",
    ]


async def test_resolve_with_an_outcome_then_reopen_to_the_same_agent(api: Api) -> None:
    async with api.database.sessions() as session:
        session.add(OutcomeCode(workspace_id=api.workspace_id, code="solved", label="Solved"))
        await session.commit()
    conversation = await api.customer_writes("wcs_r", "please close me")
    path = f"/v1/conversations/{conversation}"

    unknown = await api.as_(ADA, "POST", f"{path}/resolve", json={"outcome_code": "nope"})
    resolved = await api.as_(ADA, "POST", f"{path}/resolve", json={"outcome_code": "solved"})
    again = await api.as_(ADA, "POST", f"{path}/resolve", json={})
    reply = await api.as_(ADA, "POST", f"{path}/replies", json={"text": "late"})
    async with api.database.sessions() as session:
        load = await session.scalar(
            select(Agent.load_units).where(Agent.id == await api.agent_id(ADA))
        )
    reopened = await api.as_(ADA, "POST", f"{path}/reopen")
    reopen_again = await api.as_(ADA, "POST", f"{path}/reopen")

    assert unknown.status_code == 422
    assert resolved.status_code == 200
    assert resolved.json()["status"] == "resolved"
    assert again.status_code == 409
    assert reply.status_code == 409
    assert load == 0.0
    assert reopened.status_code == 200
    assert reopened.json()["status"] == "assigned"
    assert reopened.json()["assignee_agent_id"] == str(await api.agent_id(ADA))
    assert reopen_again.status_code == 409


async def test_snooze_until_later_then_the_timer_wakes_it(api: Api) -> None:
    conversation = await api.customer_writes("wcs_s", "later please")
    path = f"/v1/conversations/{conversation}/snooze"
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()

    past = await api.as_(
        ADA, "POST", path, json={"until": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}
    )
    naive = await api.as_(ADA, "POST", path, json={"until": "2030-01-01T09:00:00"})
    snoozed = await api.as_(ADA, "POST", path, json={"until": soon})
    async with api.database.sessions() as session:
        await session.execute(
            update(Timer)
            .where(Timer.kind == TimerKind.SNOOZE_END.value, Timer.fired_at.is_(None))
            .values(due_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    await RoutingMaintenance(api.database, api.bus, PolicyCache(0), interval_seconds=1).tick()
    woken = await api.as_(ADA, "GET", f"/v1/conversations/{conversation}")

    assert past.status_code == 422
    assert naive.status_code == 422
    assert snoozed.status_code == 200
    assert snoozed.json()["status"] == "snoozed"
    assert woken.json()["status"] == "assigned"


async def test_the_timeline_spans_the_customer_s_conversations(api: Api) -> None:
    first = await api.customer_writes("wcs_tl", "first visit")
    await api.as_(ADA, "POST", f"/v1/conversations/{first}/resolve", json={})
    second = await api.customer_writes("wcs_tl", "second visit")

    timeline = await api.as_(ADA, "GET", f"/v1/conversations/{second}/timeline")

    texts = [m["text"] for m in timeline.json() if m["direction"] == "inbound"]
    assert texts == ["first visit", "second visit"]
    assert {m["conversation_id"] for m in timeline.json()} == {first, second}


async def test_another_workspace_gets_404_everywhere(api: Api) -> None:
    conversation = await api.customer_writes("wcs_x", "private")
    other = f"other-{uuid.uuid4().hex[:8]}"
    await seed_demo(api.database, slug=other)
    outsider = await api.auth(SAM, workspace=other)
    path = f"/v1/conversations/{conversation}"
    calls = [
        ("GET", path, None),
        ("GET", f"{path}/messages", None),
        ("GET", f"{path}/timeline", None),
        ("GET", f"{path}/routing", None),
        ("POST", f"{path}/replies", {"text": "x"}),
        ("POST", f"{path}/notes", {"text": "x"}),
        ("POST", f"{path}/consultations", {"note": "x", "team": "billing"}),
        ("DELETE", f"{path}/consultations", None),
        ("POST", f"{path}/transfers", {"reason": "x", "tier": 2}),
        ("POST", f"{path}/escalations", {"reason": "x"}),
        ("POST", f"{path}/resolve", {}),
        ("POST", f"{path}/reopen", None),
        ("POST", f"{path}/snooze", {"until": "2030-01-01T09:00:00Z"}),
    ]
    for method, url, body in calls:
        response = await api.client.request(method, url, json=body, headers=outsider)
        assert response.status_code == 404, (method, url, response.text)
        assert "private" not in response.text
    listing = await api.client.get("/v1/conversations", params={"q": "private"}, headers=outsider)
    assert listing.json()["items"] == []
