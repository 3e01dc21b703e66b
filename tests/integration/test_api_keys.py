"""API keys on PostgreSQL: admins create (shown once), list without secrets, revoke;
keys authenticate with their role in their own workspace only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from shared.db.models import ApiKey
from shared.db.session import Database
from tests.integration.test_api_agents import Desk, assert_problem, open_desk

pytestmark = pytest.mark.integration


@pytest.fixture
async def desk(pg_database: Database) -> AsyncIterator[Desk]:
    async with open_desk(pg_database) as opened:
        yield opened


async def test_a_created_key_is_shown_once_and_works_until_revoked(desk: Desk) -> None:
    created = await desk.call(
        "admin", "POST", "/v1/api-keys", json={"name": "CRM sync", "role": "supervisor"}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith(f"omk_{body['key_prefix']}_")
    assert created.headers["location"] == f"/v1/api-keys/{body['id']}"
    assert body["created_by_agent_id"] == str(desk.a.agent_ids["root@demo.omniroute.dev"])
    async with desk.database.sessions() as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.key_prefix == body["key_prefix"]))
    assert row is not None
    assert key not in (row.key_hash, row.name)

    listed = await desk.call("admin", "GET", "/v1/api-keys")
    assert listed.status_code == 200
    assert key not in listed.text
    assert row.key_hash not in listed.text
    mine = [k for k in listed.json()["items"] if k["id"] == body["id"]]
    assert mine
    assert "key" not in mine[0]
    assert listed.json()["items"][0]["id"] == body["id"]  # newest first

    as_header = await desk.client.get("/v1/agents", headers={"x-api-key": key})
    as_bearer = await desk.client.get("/v1/agents", headers={"authorization": f"Bearer {key}"})
    assert as_header.status_code == 200
    assert as_bearer.status_code == 200
    assert_problem(
        await desk.client.post("/v1/teams", headers={"x-api-key": key}, json={"name": "t"}), 403
    )

    revoked = await desk.call("admin", "DELETE", f"/v1/api-keys/{body['id']}")
    assert revoked.status_code == 204
    assert (await desk.call("admin", "DELETE", f"/v1/api-keys/{body['id']}")).status_code == 204
    assert_problem(await desk.client.get("/v1/agents", headers={"x-api-key": key}), 401)
    active = await desk.call("admin", "GET", "/v1/api-keys")
    everything = await desk.call("admin", "GET", "/v1/api-keys", params={"include_revoked": True})
    assert body["id"] not in {k["id"] for k in active.json()["items"]}
    [gone] = [k for k in everything.json()["items"] if k["id"] == body["id"]]
    assert gone["revoked_at"] is not None


async def test_only_admins_and_admin_keys_manage_keys(desk: Desk) -> None:
    for who in ("agent", "supervisor", "supervisor_key"):
        assert_problem(
            await desk.call(who, "POST", "/v1/api-keys", json={"name": "x", "role": "admin"}),
            403,
        )
        assert_problem(await desk.call(who, "GET", "/v1/api-keys"), 403)
    listed = await desk.call("admin", "GET", "/v1/api-keys")
    victim = listed.json()["items"][0]["id"]
    assert_problem(await desk.call("supervisor", "DELETE", f"/v1/api-keys/{victim}"), 403)

    by_key = await desk.call(
        "admin_key", "POST", "/v1/api-keys", json={"name": "x", "role": "admin"}
    )
    assert by_key.status_code == 201, by_key.text
    assert by_key.json()["created_by_agent_id"] is None
    for bad in ({"name": "x", "role": "agent"}, {"name": "", "role": "admin"}, {"role": "admin"}):
        assert_problem(await desk.call("admin", "POST", "/v1/api-keys", json=bad), 422)


async def test_keys_stay_in_their_workspace(desk: Desk) -> None:
    theirs = await desk.client.get("/v1/api-keys", headers=desk.b.headers["admin"])
    their_key_id = theirs.json()["items"][0]["id"]
    ours = await desk.call("admin", "GET", "/v1/api-keys")
    assert their_key_id not in ours.text

    assert_problem(await desk.call("admin", "DELETE", f"/v1/api-keys/{their_key_id}"), 404)
    still_works = await desk.client.get("/v1/agents", headers=desk.b.headers["admin_key"])
    assert still_works.status_code == 200
    assert {a["id"] for a in still_works.json()["items"]} == {
        str(i) for i in desk.b.agent_ids.values()
    }
    our_agent = desk.a.agent_ids["ada@demo.omniroute.dev"]
    assert_problem(
        await desk.client.get(f"/v1/agents/{our_agent}", headers=desk.b.headers["admin_key"]),
        404,
    )
    assert_problem(await desk.client.get("/v1/agents", headers={"x-api-key": "omk_abc_def"}), 401)
