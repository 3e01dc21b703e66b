"""Agent administration on PostgreSQL: reads for all, writes for admins, presence for
supervisors, deactivation handing work on; other workspaces' agents answer 404.

Also home of ``Desk``, the two-workspace harness the other ``test_api_*`` files use.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from devmode.seed import DEMO_AGENTS, DEMO_PASSWORD, seed_demo
from services.agent_api.app import create_app
from services.agent_api.auth import AgentClaims, hash_password, issue_agent_token, new_api_key
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.db.models import (
    Agent,
    AgentStatus,
    ApiKey,
    Contact,
    Conversation,
    ConversationStatus,
    Timer,
    TimerKind,
    utcnow,
)
from shared.db.session import Database
from shared.events import ConversationAssigned, ConversationUnassigned, Topic, decode_event
from shared.problems import PROBLEM_CONTENT_TYPE
from shared.routing.engine import PolicyCache
from shared.settings import Environment, Settings
from tests.conftest import served
from tests.unit.test_router import as_record, inbound

pytestmark = pytest.mark.integration

ADA, BEN, CY, SAM = (a.email for a in DEMO_AGENTS)
ROOT = "root@demo.omniroute.dev"


@dataclass
class Tenant:
    slug: str
    workspace_id: uuid.UUID
    agent_ids: dict[str, uuid.UUID] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class Desk:
    """Workspace ``a`` (the caller's) and ``b`` (someone else's) behind one served app.

    ``a.headers``: ``agent`` (Ada), ``supervisor`` (Sam), ``admin`` (Root),
    ``supervisor_key`` and ``admin_key`` (API keys), and per email.
    """

    client: httpx.AsyncClient
    database: Database
    bus: MemoryBus
    settings: Settings
    a: Tenant
    b: Tenant

    async def call(self, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, path, headers=self.a.headers[who], **kwargs)

    async def agent(self, agent_id: uuid.UUID) -> Agent:
        async with self.database.sessions() as session:
            agent = await session.get(Agent, agent_id)
        assert agent is not None
        return agent

    def events(self, kind: type[Any]) -> list[Any]:
        decoded = [decode_event(r).data for r in self.bus.records(Topic.EVENTS.value)]
        return [d for d in decoded if isinstance(d, kind)]


async def _tenant(database: Database, settings: Settings, prefix: str) -> Tenant:
    slug = f"{prefix}-{uuid.uuid4().hex[:8]}"
    tenant = Tenant(slug=slug, workspace_id=await seed_demo(database, slug=slug))
    async with database.sessions() as session:
        session.add(
            Agent(
                id=uuid.uuid4(),
                workspace_id=tenant.workspace_id,
                email=ROOT,
                display_name="Root (admin)",
                password_hash=hash_password(DEMO_PASSWORD),
                role="admin",
                tier=3,
                status=AgentStatus.OFFLINE.value,
            )
        )
        for role in ("supervisor", "admin"):
            key, prefix_, digest = new_api_key()
            session.add(
                ApiKey(
                    workspace_id=tenant.workspace_id,
                    name=f"{role} integration",
                    key_prefix=prefix_,
                    key_hash=digest,
                    role=role,
                )
            )
            tenant.headers[f"{role}_key"] = {"x-api-key": key}
        await session.commit()
        for agent in await session.scalars(
            select(Agent).where(Agent.workspace_id == tenant.workspace_id)
        ):
            tenant.agent_ids[agent.email] = agent.id
            token, _ = issue_agent_token(
                AgentClaims(agent.id, tenant.workspace_id, agent.role), settings
            )
            tenant.headers[agent.email] = {"authorization": f"Bearer {token}"}
    tenant.headers["agent"] = tenant.headers[ADA]
    tenant.headers["supervisor"] = tenant.headers[SAM]
    tenant.headers["admin"] = tenant.headers[ROOT]
    return tenant


@contextlib.asynccontextmanager
async def open_desk(database: Database, **overrides: Any) -> AsyncIterator[Desk]:
    """Two seeded workspaces (with an admin and two API keys each) and a served app;
    ``overrides`` are further settings."""
    settings = Settings(
        environment=Environment.TEST,
        database_url=database.url,
        rate_limit_per_minute=100_000,
        log_json=False,
        **overrides,
    )
    a = await _tenant(database, settings, "desk-a")
    b = await _tenant(database, settings, "desk-b")
    bus = MemoryBus()
    async with (
        served(create_app(settings, bus=bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield Desk(client, database, bus, settings, a, b)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def queued_conversation(
    database: Database,
    workspace_id: uuid.UUID,
    *,
    tier: int = 1,
    team_id: uuid.UUID | None = None,
    channel: str = "webchat",
    waiting_seconds: float = 0,
    contact_id: uuid.UUID | None = None,
) -> uuid.UUID:
    async with database.sessions() as session:
        if contact_id is None:
            contact = Contact(id=uuid.uuid4(), workspace_id=workspace_id)
            session.add(contact)
            await session.flush()
            contact_id = contact.id
        since = utcnow() - timedelta(seconds=waiting_seconds)
        conversation = Conversation(
            id=uuid.uuid4(),
            workspace_id=workspace_id,
            contact_id=contact_id,
            channel=channel,
            thread_key=f"wcs_{uuid.uuid4().hex}",
            status=ConversationStatus.QUEUED.value,
            tier=tier,
            team_id=team_id,
            queued_at=since,
            created_at=since,
            last_message_at=since,
        )
        session.add(conversation)
        await session.commit()
        return conversation.id


@pytest.fixture
async def desk(pg_database: Database) -> AsyncIterator[Desk]:
    async with open_desk(pg_database) as opened:
        yield opened


async def test_every_role_and_key_reads_agents_with_filters_and_pages(desk: Desk) -> None:
    for who in ("agent", "supervisor", "admin", "supervisor_key", "admin_key"):
        response = await desk.call(who, "GET", "/v1/agents")
        assert response.status_code == 200, (who, response.text)
        emails = {item["email"] for item in response.json()["items"]}
        assert emails == {ADA, BEN, CY, SAM, ROOT}

    by_tier = await desk.call("agent", "GET", "/v1/agents", params={"tier": 2})
    by_team = await desk.call("agent", "GET", "/v1/agents", params={"team": "billing"})
    by_role = await desk.call("agent", "GET", "/v1/agents", params={"role": "supervisor"})
    by_status = await desk.call("agent", "GET", "/v1/agents", params={"status": "online"})
    assert [a["email"] for a in by_tier.json()["items"]] == [CY]
    assert [(a["email"], a["teams"]) for a in by_team.json()["items"]] == [(CY, ["billing"])]
    assert [a["email"] for a in by_role.json()["items"]] == [SAM]
    assert [a["email"] for a in by_status.json()["items"]] == [ADA]

    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await desk.call("agent", "GET", "/v1/agents", params=params)).json()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(str(i) for i in desk.a.agent_ids.values())
    assert len(seen) == len(set(seen)) == 5

    assert_problem(await desk.call("agent", "GET", "/v1/agents", params={"cursor": "nope"}), 400)
    assert_problem(await desk.call("agent", "GET", "/v1/agents", params={"tier": 9}), 422)
    assert_problem(await desk.client.get("/v1/agents"), 401)


async def test_another_workspaces_agent_is_404_and_nothing_leaks(desk: Desk) -> None:
    theirs = desk.b.agent_ids[ADA]
    for who in ("agent", "admin", "admin_key"):
        read = await desk.call(who, "GET", f"/v1/agents/{theirs}")
        assert_problem(read, 404)
        assert ADA not in read.text
    patch = await desk.call("admin", "PATCH", f"/v1/agents/{theirs}", json={"tier": 3})
    status = await desk.call("admin", "PUT", f"/v1/agents/{theirs}/status", json={"status": "away"})
    delete = await desk.call("admin", "DELETE", f"/v1/agents/{theirs}")
    for response in (patch, status, delete):
        assert_problem(response, 404)
    agent = await desk.agent(theirs)
    assert (agent.tier, agent.status, agent.deactivated_at) == (1, "online", None)
    listed = await desk.call("admin", "GET", "/v1/agents", params={"include_deactivated": True})
    assert str(theirs) not in listed.text

    mine = await desk.call("agent", "GET", f"/v1/agents/{desk.a.agent_ids[CY]}")
    assert mine.status_code == 200
    assert mine.json()["teams"] == ["billing"]
    assert_problem(await desk.call("agent", "GET", f"/v1/agents/{uuid.uuid4()}"), 404)
    assert_problem(await desk.call("agent", "GET", "/v1/agents/not-a-uuid"), 422)


async def test_admins_create_agents_who_can_then_sign_in(desk: Desk) -> None:
    body = {
        "email": "Dee@Demo.omniroute.dev",
        "display_name": "Dee",
        "password": "a-long-password",
        "role": "agent",
        "tier": 2,
        "skills": ["billing", "billing", "refunds"],
        "languages": ["en"],
        "capacity_units": 4,
        "teams": ["billing"],
    }
    for who in ("agent", "supervisor", "supervisor_key"):
        assert_problem(await desk.call(who, "POST", "/v1/agents", json=body), 403)

    created = await desk.call("admin", "POST", "/v1/agents", json=body)
    assert created.status_code == 201, created.text
    dee = created.json()
    assert created.headers["location"] == f"/v1/agents/{dee['id']}"
    assert dee["email"] == "dee@demo.omniroute.dev"
    assert (dee["tier"], dee["skills"], dee["teams"]) == (2, ["billing", "refunds"], ["billing"])
    assert (dee["status"], dee["capacity_units"], dee["load_units"]) == ("offline", 4, 0)
    assert "password" not in created.text
    assert "scrypt" not in created.text

    signed_in = await desk.client.post(
        "/v1/auth/token",
        json={"workspace": desk.a.slug, "email": body["email"], "password": body["password"]},
    )
    assert signed_in.status_code == 200, signed_in.text

    via_key = await desk.call(
        "admin_key", "POST", "/v1/agents", json=body | {"email": "eve@demo.omniroute.dev"}
    )
    assert via_key.status_code == 201, via_key.text

    assert_problem(await desk.call("admin", "POST", "/v1/agents", json=body), 409)
    unknown_team = body | {"email": "fay@demo.omniroute.dev", "teams": ["nope"]}
    assert (
        "nope"
        in assert_problem(await desk.call("admin", "POST", "/v1/agents", json=unknown_team), 422)[
            "detail"
        ]
    )
    for bad in ({"tier": 4}, {"capacity_units": 0}, {"email": "no-at-sign"}, {"password": "x"}):
        response = await desk.call("admin", "POST", "/v1/agents", json=body | bad)
        assert_problem(response, 422)
    assert_problem(await desk.call("admin", "POST", "/v1/agents", json=body | {"extra": 1}), 422)
    async with desk.database.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Agent)
            .where(Agent.workspace_id == desk.a.workspace_id, Agent.email.like("fay%"))
        )
    assert count == 0


async def test_admins_patch_agents_within_the_rules(desk: Desk) -> None:
    ben = desk.a.agent_ids[BEN]
    path = f"/v1/agents/{ben}"
    for who in ("agent", "supervisor", "supervisor_key"):
        assert_problem(await desk.call(who, "PATCH", path, json={"tier": 2}), 403)

    changed = await desk.call(
        "admin",
        "PATCH",
        path,
        json={"tier": 3, "skills": ["vip"], "languages": ["en", "fr"], "teams": ["billing"]},
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["tier"], changed.json()["teams"]) == (3, ["billing"])
    assert changed.json()["languages"] == ["en", "fr"]
    cleared = await desk.call("admin", "PATCH", path, json={"teams": []})
    assert cleared.json()["teams"] == []

    async with desk.database.sessions() as session:
        await session.execute(update(Agent).where(Agent.id == ben).values(load_units=2.0))
        await session.commit()
    below = await desk.call("admin", "PATCH", path, json={"capacity_units": 1.5})
    assert "load" in assert_problem(below, 409)["detail"]
    assert (await desk.agent(ben)).capacity_units == 3.0
    at_load = await desk.call("admin", "PATCH", path, json={"capacity_units": 2})
    assert at_load.json()["capacity_units"] == 2

    taken = await desk.call("admin", "PATCH", path, json={"email": ADA})
    assert_problem(taken, 409)
    last_admin = await desk.call(
        "admin", "PATCH", f"/v1/agents/{desk.a.agent_ids[ROOT]}", json={"role": "agent"}
    )
    assert_problem(last_admin, 409)
    promoted = await desk.call("admin", "PATCH", path, json={"role": "admin"})
    assert promoted.json()["role"] == "admin"
    demoted = await desk.call(
        "admin", "PATCH", f"/v1/agents/{desk.a.agent_ids[ROOT]}", json={"role": "supervisor"}
    )
    assert demoted.json()["role"] == "supervisor"
    assert_problem(await desk.call("admin_key", "PATCH", path, json={"tier": 0}), 422)
    assert_problem(await desk.call("admin_key", "PATCH", path, json={"teams": ["x"]}), 422)


async def test_an_online_agent_who_gains_a_tier_takes_waiting_work_at_once(desk: Desk) -> None:
    waiting = await queued_conversation(desk.database, desk.a.workspace_id, tier=2)
    ada = desk.a.agent_ids[ADA]
    response = await desk.call("admin", "PATCH", f"/v1/agents/{ada}", json={"tier": 2})
    assert response.status_code == 200, response.text
    assert response.json()["load_units"] == 1.0
    async with desk.database.sessions() as session:
        conversation = await session.get(Conversation, waiting)
    assert conversation is not None
    assert (conversation.status, conversation.assignee_agent_id) == ("assigned", ada)
    assert [e.agent_id for e in desk.events(ConversationAssigned)] == [ada]


async def test_deactivating_hands_work_on_and_locks_the_agent_out(desk: Desk) -> None:
    ada, ben = desk.a.agent_ids[ADA], desk.a.agent_ids[BEN]
    router = InboundRouter(desk.database, desk.bus, PolicyCache(ttl_seconds=0))
    await router.handle([as_record(inbound(desk.a.workspace_id, "wcs_deact", "p-deact"))])
    async with desk.database.sessions() as session:
        conversation_id = await session.scalar(
            select(Conversation.id).where(
                Conversation.workspace_id == desk.a.workspace_id,
                Conversation.assignee_agent_id == ada,
            )
        )
        await session.execute(update(Agent).where(Agent.id == ben).values(status="online"))
        await session.commit()
    assert conversation_id is not None

    for who in ("agent", "supervisor", "supervisor_key"):
        assert_problem(await desk.call(who, "DELETE", f"/v1/agents/{ada}"), 403)
    assert_problem(await desk.call("admin", "DELETE", f"/v1/agents/{desk.a.agent_ids[ROOT]}"), 409)

    gone = await desk.call("admin", "DELETE", f"/v1/agents/{ada}")
    assert gone.status_code == 204, gone.text
    again = await desk.call("admin", "DELETE", f"/v1/agents/{ada}")
    assert again.status_code == 204

    agent = await desk.agent(ada)
    assert (agent.status, agent.load_units) == ("offline", 0.0)
    assert agent.deactivated_at is not None
    async with desk.database.sessions() as session:
        conversation = await session.get(Conversation, conversation_id)
        pending_grace = await session.scalar(
            select(func.count())
            .select_from(Timer)
            .where(
                Timer.agent_id == ada,
                Timer.kind == TimerKind.OWNER_OFFLINE_GRACE.value,
                Timer.cancelled_at.is_(None),
                Timer.fired_at.is_(None),
            )
        )
    assert conversation is not None
    assert conversation.assignee_agent_id == ben
    assert pending_grace == 0
    assert [e.agent_id for e in desk.events(ConversationUnassigned)] == [ada]
    assert [e.agent_id for e in desk.events(ConversationAssigned)][-1] == ben

    sign_in = await desk.client.post(
        "/v1/auth/token", json={"workspace": desk.a.slug, "email": ADA, "password": DEMO_PASSWORD}
    )
    assert_problem(sign_in, 401)
    # Her token stops working at once, not when it expires.
    back_online = await desk.call("agent", "PUT", "/v1/me/status", json={"status": "online"})
    assert_problem(back_online, 401)
    by_supervisor = await desk.call(
        "supervisor", "PUT", f"/v1/agents/{ada}/status", json={"status": "online"}
    )
    assert_problem(by_supervisor, 409)
    assert_problem(await desk.call("admin", "PATCH", f"/v1/agents/{ada}", json={"tier": 2}), 409)

    active = await desk.call("admin", "GET", "/v1/agents")
    everyone = await desk.call("admin", "GET", "/v1/agents", params={"include_deactivated": True})
    assert str(ada) not in {a["id"] for a in active.json()["items"]}
    [listed] = [a for a in everyone.json()["items"] if a["id"] == str(ada)]
    assert listed["deactivated_at"] is not None


async def test_supervisors_set_presence_with_the_same_effects_as_me_status(desk: Desk) -> None:
    ben = desk.a.agent_ids[BEN]
    path = f"/v1/agents/{ben}/status"
    waiting = await queued_conversation(desk.database, desk.a.workspace_id)
    async with desk.database.sessions() as session:  # Ada is full: only Ben can take it
        await session.execute(
            update(Agent).where(Agent.id == desk.a.agent_ids[ADA]).values(status="offline")
        )
        await session.commit()

    assert_problem(await desk.call("agent", "PUT", path, json={"status": "online"}), 403)
    online = await desk.call("supervisor", "PUT", path, json={"status": "online"})
    assert online.status_code == 200, online.text
    assert online.json()["status"] == "online"
    async with desk.database.sessions() as session:
        conversation = await session.get(Conversation, waiting)
    assert conversation is not None
    assert conversation.assignee_agent_id == ben

    away = await desk.call("supervisor_key", "PUT", path, json={"status": "away"})
    assert away.json()["status"] == "away"
    async with desk.database.sessions() as session:
        grace = await session.scalar(
            select(func.count())
            .select_from(Timer)
            .where(Timer.agent_id == ben, Timer.kind == TimerKind.OWNER_OFFLINE_GRACE.value)
        )
    assert grace == 1
    unchanged = await desk.call("admin", "PUT", path, json={"status": "away"})
    assert unchanged.status_code == 200
    assert_problem(await desk.call("admin", "PUT", path, json={"status": "asleep"}), 422)


async def test_teams_are_read_by_all_created_by_admins_and_filled_through_agents(
    desk: Desk,
) -> None:
    listed = await desk.call("agent", "GET", "/v1/teams")
    assert [(t["name"], t["member_count"]) for t in listed.json()["items"]] == [("billing", 1)]
    for who in ("agent", "supervisor", "supervisor_key"):
        assert_problem(await desk.call(who, "POST", "/v1/teams", json={"name": "vip"}), 403)

    created = await desk.call("admin", "POST", "/v1/teams", json={"name": "vip desk"})
    assert created.status_code == 201, created.text
    team = created.json()
    assert created.headers["location"] == f"/v1/teams/{team['id']}"
    assert_problem(await desk.call("admin", "POST", "/v1/teams", json={"name": "vip desk"}), 409)
    for bad in ("", " padded ", "x" * 101):
        assert_problem(await desk.call("admin", "POST", "/v1/teams", json={"name": bad}), 422)

    ben = desk.a.agent_ids[BEN]
    joined = await desk.call(
        "admin", "PATCH", f"/v1/agents/{ben}", json={"teams": ["vip desk", "billing"]}
    )
    assert joined.json()["teams"] == ["billing", "vip desk"]
    detail = await desk.call("agent", "GET", f"/v1/teams/{team['id']}")
    assert [m["id"] for m in detail.json()["members"]] == [str(ben)]
    page1 = await desk.call("agent", "GET", "/v1/teams", params={"limit": 1})
    page2 = await desk.call(
        "agent", "GET", "/v1/teams", params={"limit": 1, "cursor": page1.json()["next_cursor"]}
    )
    assert [t["name"] for t in page1.json()["items"] + page2.json()["items"]] == [
        "billing",
        "vip desk",
    ]
    assert page2.json()["next_cursor"] is None

    theirs = await desk.client.get("/v1/teams", headers=desk.b.headers["admin"])
    assert [t["name"] for t in theirs.json()["items"]] == ["billing"]
    assert_problem(
        await desk.client.get(f"/v1/teams/{team['id']}", headers=desk.b.headers["admin"]), 404
    )
