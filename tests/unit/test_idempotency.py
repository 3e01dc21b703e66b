"""Idempotency-Key on POST: replay of stored 2xx answers, 422 for a reused key with a
different request, 409 for a concurrent duplicate, nothing kept for failures, expiry.

Runs on SQLite: through the real agent API for creates, and around a tiny app with a
gate for the in-flight case.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, func, select, update

from devmode.seed import DEMO_AGENTS
from services.agent_api.app import create_app
from services.agent_api.auth import AgentClaims, issue_agent_token
from services.agent_api.idempotency import IdempotencyMiddleware
from services.agent_api.rest import credential_fingerprint
from shared.bus.memory import MemoryBus
from shared.db.models import Agent, CannedResponse, IdempotencyRecord, utcnow
from shared.db.session import Database
from shared.problems import PROBLEM_CONTENT_TYPE, install_problem_handlers
from shared.settings import Settings
from tests.conftest import served

SAM = next(a.email for a in DEMO_AGENTS if a.role.value == "supervisor")
BODY = {"shortcut": "tracking", "title": "Tracking", "body": "Your tracking link: …"}


async def supervisor_headers(
    database: Database, settings: Settings, workspace_id: uuid.UUID, *, seconds: int = 0
) -> dict[str, str]:
    """A token for Sam; ``seconds`` shifts the issue time, making a different token."""
    async with database.sessions() as session:
        sam = await session.scalar(
            select(Agent.id).where(Agent.workspace_id == workspace_id, Agent.email == SAM)
        )
    assert sam is not None
    token, _ = issue_agent_token(
        AgentClaims(sam, workspace_id, "supervisor"),
        settings,
        now=utcnow() - timedelta(seconds=seconds),
    )
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
async def api(
    settings: Settings, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        served(create_app(settings, bus=MemoryBus(), database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        client.headers.update(await supervisor_headers(database, settings, workspace_id))
        yield client


async def canned_count(database: Database, shortcut: str) -> int:
    async with database.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(CannedResponse)
            .where(CannedResponse.shortcut == shortcut)
        )
    return int(count or 0)


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)


async def test_a_retried_create_is_replayed_not_repeated(
    api: httpx.AsyncClient, database: Database
) -> None:
    key = {"idempotency-key": "create-tracking-1"}
    first = await api.post("/v1/canned-responses", json=BODY, headers=key)
    retry = await api.post("/v1/canned-responses", json=BODY, headers=key)
    assert first.status_code == retry.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()
    assert retry.headers["content-type"] == first.headers["content-type"]
    assert await canned_count(database, "tracking") == 1

    other_body = await api.post("/v1/canned-responses", json=BODY | {"title": "Other"}, headers=key)
    assert_problem(other_body, 422)
    other_path = await api.post("/v1/outcome-codes", json={"code": "x", "label": "x"}, headers=key)
    assert_problem(other_path, 422)
    without_key = await api.post("/v1/canned-responses", json=BODY)
    assert_problem(without_key, 409)  # the create really runs again without a key


async def test_keys_are_scoped_by_credential(
    api: httpx.AsyncClient, database: Database, settings: Settings, workspace_id: uuid.UUID
) -> None:
    key = {"idempotency-key": "shared-key"}
    assert (await api.post("/v1/canned-responses", json=BODY, headers=key)).status_code == 201
    other_token = await supervisor_headers(database, settings, workspace_id, seconds=30)
    other = await api.post("/v1/canned-responses", json=BODY, headers=key | other_token)
    assert_problem(other, 409)  # not a replay of someone else's answer: it ran (duplicate)
    assert "idempotent-replayed" not in other.headers


async def test_failures_are_not_stored_so_a_retry_runs_again(
    api: httpx.AsyncClient, database: Database
) -> None:
    assert (await api.post("/v1/canned-responses", json=BODY)).status_code == 201
    key = {"idempotency-key": "after-conflict"}
    conflict = await api.post("/v1/canned-responses", json=BODY, headers=key)
    assert_problem(conflict, 409)
    async with database.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
        await session.execute(delete(CannedResponse))
        await session.commit()
    retried = await api.post("/v1/canned-responses", json=BODY, headers=key)
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers


async def test_bad_keys_anonymous_calls_and_other_methods(
    api: httpx.AsyncClient, database: Database
) -> None:
    for bad in (b"x" * 201, b"has space", "é".encode()):
        response = await api.post(
            "/v1/canned-responses", json=BODY, headers={b"idempotency-key": bad}
        )
        assert_problem(response, 400)
    async with httpx.AsyncClient(base_url=str(api.base_url)) as stranger:
        anonymous = await stranger.post(
            "/v1/canned-responses", json=BODY, headers={"idempotency-key": "anon"}
        )
    assert_problem(anonymous, 401)
    listing = await api.get("/v1/canned-responses", headers={"idempotency-key": "get"})
    assert listing.status_code == 200
    async with database.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
    assert await canned_count(database, "tracking") == 0


class GatedApp:
    """A tiny app whose POST waits for a gate, to hold a request in flight."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls = 0
        app = FastAPI()
        install_problem_handlers(app)
        app.state.agent_api = SimpleNamespace(database=database, settings=settings)
        app.add_middleware(IdempotencyMiddleware)

        @app.post("/things", status_code=201)
        async def create(body: dict[str, Any]) -> dict[str, Any]:
            self.calls += 1
            self.entered.set()
            await self.gate.wait()
            if body.get("explode"):
                raise RuntimeError("boom")
            return {"call": self.calls, **body}

        self.app = app

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url="http://test",
            headers={"authorization": "Bearer caller-1", "idempotency-key": "k1"},
        )


async def test_a_concurrent_duplicate_gets_409_while_the_first_is_in_flight(
    database: Database, settings: Settings
) -> None:
    gated = GatedApp(database, settings)
    async with gated.client() as client:
        first = asyncio.create_task(client.post("/things", json={"n": 1}))
        await asyncio.wait_for(gated.entered.wait(), timeout=10)
        duplicate = await client.post("/things", json={"n": 1})
        different = await client.post("/things", json={"n": 2})
        gated.gate.set()
        done = await first
        replay = await client.post("/things", json={"n": 1})
    assert_problem(duplicate, 409)
    assert_problem(different, 422)
    assert done.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == done.json() == {"call": 1, "n": 1}
    assert gated.calls == 1


async def test_a_crashing_request_releases_its_claim(
    database: Database, settings: Settings
) -> None:
    gated = GatedApp(database, settings)
    gated.gate.set()
    async with gated.client() as client:
        crashed = await client.post("/things", json={"explode": True})
        async with database.sessions() as session:
            claims = await session.scalar(select(func.count()).select_from(IdempotencyRecord))
        again = await client.post("/things", json={"explode": True})
    assert crashed.status_code == 500
    assert claims == 0
    assert again.status_code == 500
    assert gated.calls == 2


def stale_record(scope: str, key: str, age: timedelta, *, answered: bool) -> IdempotencyRecord:
    return IdempotencyRecord(
        scope=scope,
        key=key,
        method="POST",
        path="/things",
        request_hash="an earlier request",
        status_code=201 if answered else None,
        response_body='{"call": 0}' if answered else None,
        created_at=utcnow() - age,
    )


async def record_keys(database: Database) -> set[str]:
    async with database.sessions() as session:
        return set(await session.scalars(select(IdempotencyRecord.key)))


async def test_expired_records_and_abandoned_claims_no_longer_hold_the_key(
    database: Database, settings: Settings
) -> None:
    gated = GatedApp(database, settings)
    gated.gate.set()
    ttl = timedelta(seconds=settings.idempotency_ttl_seconds)
    caller = credential_fingerprint([(b"authorization", b"Bearer caller-1")])
    assert caller is not None
    async with database.sessions() as session:
        session.add(stale_record("someone-else", "old", ttl * 2, answered=True))
        session.add(stale_record(caller, "k2", timedelta(minutes=5), answered=False))
        session.add(stale_record(caller, "k3", timedelta(seconds=1), answered=False))
        await session.commit()
    async with gated.client() as client:
        assert (await client.post("/things", json={"n": 1})).json()["call"] == 1
        assert "old" not in await record_keys(database)  # purged
        assert (await client.post("/things", json={"n": 1})).json()["call"] == 1
        async with database.sessions() as session:
            await session.execute(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.key == "k1")
                .values(created_at=utcnow() - ttl - timedelta(seconds=1))
            )
            await session.commit()
        expired = await client.post("/things", json={"n": 1})
        abandoned = await client.post("/things", json={"n": 2}, headers={"idempotency-key": "k2"})
        in_flight = await client.post("/things", json={"n": 3}, headers={"idempotency-key": "k3"})
    assert "idempotent-replayed" not in expired.headers
    assert expired.json()["call"] == 2
    assert abandoned.status_code == 201
    assert abandoned.json()["call"] == 3
    assert_problem(in_flight, 422)  # a live claim for a different request
    assert gated.calls == 3
