"""Rate limits per token (429 problem+json with Retry-After) and the CORS allow-list."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from devmode.seed import DEMO_AGENTS
from services.agent_api.app import create_app
from services.agent_api.auth import AgentClaims, issue_agent_token
from shared.bus.memory import MemoryBus
from shared.db.models import Agent
from shared.db.session import Database
from shared.problems import PROBLEM_CONTENT_TYPE
from shared.rate_limit import TokenBucket
from shared.settings import Environment, Settings
from tests.conftest import served

ALLOWED = "https://desk.acme.example"


def test_a_bucket_grants_a_burst_then_one_per_interval() -> None:
    bucket = TokenBucket(capacity=3, refill_per_second=3 / 60, tokens=3, updated=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(20.0)
    assert bucket.take(10.0) == pytest.approx(10.0)
    assert bucket.take(20.0) == 0.0
    assert bucket.take(20.0) > 0
    assert [bucket.take(1000.0) for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # never above burst


@pytest.fixture
def limited_settings(sqlite_url: str) -> Settings:
    return Settings(
        environment=Environment.TEST,
        database_url=sqlite_url,
        log_json=False,
        rate_limit_per_minute=3,
        cors_allow_origins=[ALLOWED],
    )


@pytest.fixture
async def api(
    limited_settings: Settings, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        served(create_app(limited_settings, bus=MemoryBus(), database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield client


async def tokens(
    database: Database, settings: Settings, workspace_id: uuid.UUID
) -> list[dict[str, str]]:
    async with database.sessions() as session:
        agents = list(
            await session.scalars(select(Agent).where(Agent.workspace_id == workspace_id))
        )
    by_email = {a.email: a for a in agents}
    headers = []
    for demo in DEMO_AGENTS[:2]:
        agent = by_email[demo.email]
        token, _ = issue_agent_token(AgentClaims(agent.id, workspace_id, agent.role), settings)
        headers.append({"authorization": f"Bearer {token}"})
    return headers


async def test_each_token_has_its_own_budget_and_429_says_when_to_retry(
    api: httpx.AsyncClient,
    database: Database,
    limited_settings: Settings,
    workspace_id: uuid.UUID,
) -> None:
    ada, ben = await tokens(database, limited_settings, workspace_id)
    answers = [(await api.get("/v1/me", headers=ada)).status_code for _ in range(3)]
    limited = await api.get("/v1/me", headers=ada)
    other_token = await api.get("/v1/me", headers=ben)

    assert answers == [200, 200, 200]
    assert limited.status_code == 429
    assert limited.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    assert limited.json()["status"] == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 20
    assert limited.headers["x-correlation-id"]
    assert other_token.status_code == 200

    for _ in range(10):
        assert (await api.get("/healthz")).status_code == 200
        assert (await api.get("/metrics")).status_code == 200


async def test_anonymous_calls_are_limited_by_address(api: httpx.AsyncClient) -> None:
    bodies = {"workspace": "demo", "email": "nobody@x.example", "password": "guess"}
    statuses = [(await api.post("/v1/auth/token", json=bodies)).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


async def test_cors_allows_listed_origins_only_and_exposes_our_headers(
    api: httpx.AsyncClient,
    database: Database,
    limited_settings: Settings,
    workspace_id: uuid.UUID,
) -> None:
    preflight = await api.options(
        "/v1/canned-responses",
        headers={
            "origin": ALLOWED,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, idempotency-key, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    allowed_headers = preflight.headers["access-control-allow-headers"].lower()
    assert "idempotency-key" in allowed_headers
    assert "authorization" in allowed_headers

    refused = await api.options(
        "/v1/canned-responses",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers

    ada, _ = await tokens(database, limited_settings, workspace_id)
    simple = await api.get("/v1/me", headers=ada | {"origin": ALLOWED})
    stranger = await api.get("/v1/me", headers=ada | {"origin": "https://evil.example"})
    assert simple.headers["access-control-allow-origin"] == ALLOWED
    exposed = {
        h.strip().lower() for h in simple.headers["access-control-expose-headers"].split(",")
    }
    assert exposed == {"x-correlation-id", "idempotent-replayed", "retry-after"}
    assert "access-control-allow-origin" not in stranger.headers
