"""Canned responses and outcome codes on PostgreSQL: every role reads, supervisors
write; another workspace's entries answer 404 and never appear."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devmode.seed import DEMO_CANNED_RESPONSES, DEMO_OUTCOME_CODES
from shared.db.session import Database
from tests.integration.test_api_agents import Desk, assert_problem, open_desk

pytestmark = pytest.mark.integration

NEW = {"shortcut": "late-parcel", "title": "Late parcel", "body": "Sorry, your parcel is late."}


@pytest.fixture
async def desk(pg_database: Database) -> AsyncIterator[Desk]:
    async with open_desk(pg_database) as opened:
        yield opened


async def test_everyone_reads_and_searches_the_seeded_canned_responses(desk: Desk) -> None:
    for who in ("agent", "supervisor", "admin_key"):
        response = await desk.call(who, "GET", "/v1/canned-responses")
        assert response.status_code == 200, response.text
    seeded = [c["shortcut"] for c in response.json()["items"]]
    assert sorted(seeded) == sorted(shortcut for shortcut, _, _ in DEMO_CANNED_RESPONSES)
    found = await desk.call("agent", "GET", "/v1/canned-responses", params={"q": "BUSINESS DAYS"})
    assert [c["shortcut"] for c in found.json()["items"]] == ["refund-timeline"]
    page1 = await desk.call("agent", "GET", "/v1/canned-responses", params={"limit": 2})
    page2 = await desk.call(
        "agent",
        "GET",
        "/v1/canned-responses",
        params={"limit": 2, "cursor": page1.json()["next_cursor"]},
    )
    assert [c["shortcut"] for c in page1.json()["items"] + page2.json()["items"]] == seeded
    assert_problem(await desk.client.get("/v1/canned-responses"), 401)


async def test_supervisors_create_change_and_delete_canned_responses(desk: Desk) -> None:
    assert_problem(await desk.call("agent", "POST", "/v1/canned-responses", json=NEW), 403)
    created = await desk.call("supervisor", "POST", "/v1/canned-responses", json=NEW)
    assert created.status_code == 201, created.text
    canned = created.json()
    path = f"/v1/canned-responses/{canned['id']}"
    assert created.headers["location"] == path
    assert_problem(await desk.call("admin", "POST", "/v1/canned-responses", json=NEW), 409)
    for bad in ({"shortcut": "has space"}, {"body": ""}, {"title": "x" * 201}, {"x": 1}):
        response = await desk.call("supervisor", "POST", "/v1/canned-responses", json=NEW | bad)
        assert_problem(response, 422)

    assert (await desk.call("agent", "GET", path)).json()["body"] == NEW["body"]
    assert_problem(await desk.call("agent", "PATCH", path, json={"title": "x"}), 403)
    changed = await desk.call("supervisor_key", "PATCH", path, json={"body": "It is on its way."})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["body"], changed.json()["title"]) == ("It is on its way.", "Late parcel")
    assert changed.json()["updated_at"] > canned["updated_at"]
    taken = await desk.call("supervisor", "PATCH", path, json={"shortcut": "greeting"})
    assert_problem(taken, 409)

    assert_problem(await desk.call("agent", "DELETE", path), 403)
    deleted = await desk.call("supervisor", "DELETE", path)
    assert deleted.status_code == 204
    assert_problem(await desk.call("agent", "GET", path), 404)
    assert_problem(await desk.call("supervisor", "DELETE", path), 404)


async def test_another_workspaces_canned_responses_are_invisible(desk: Desk) -> None:
    created = await desk.call("supervisor", "POST", "/v1/canned-responses", json=NEW)
    path = f"/v1/canned-responses/{created.json()['id']}"
    other = desk.b.headers
    theirs = await desk.client.get("/v1/canned-responses", headers=other["supervisor"])
    assert "late-parcel" not in theirs.text
    assert_problem(await desk.client.get(path, headers=other["admin"]), 404)
    assert_problem(
        await desk.client.patch(path, headers=other["admin"], json={"title": "mine now"}), 404
    )
    assert_problem(await desk.client.delete(path, headers=other["admin_key"]), 404)
    assert (await desk.call("agent", "GET", path)).json()["title"] == "Late parcel"
    same_shortcut = await desk.client.post(
        "/v1/canned-responses", headers=other["supervisor"], json=NEW
    )
    assert same_shortcut.status_code == 201  # shortcuts are unique per workspace only


async def test_outcome_codes_are_read_by_all_and_added_by_supervisors(desk: Desk) -> None:
    listed = await desk.call("agent", "GET", "/v1/outcome-codes")
    assert listed.status_code == 200
    seeded = [c["code"] for c in listed.json()["items"]]
    assert sorted(seeded) == sorted(c for c, _ in DEMO_OUTCOME_CODES)

    body = {"code": "escalated_vendor", "label": "Escalated to the vendor"}
    assert_problem(await desk.call("agent", "POST", "/v1/outcome-codes", json=body), 403)
    created = await desk.call("supervisor", "POST", "/v1/outcome-codes", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["code"] == "escalated_vendor"
    assert_problem(await desk.call("admin", "POST", "/v1/outcome-codes", json=body), 409)
    for bad in ({"code": "Has Caps"}, {"code": ""}, {"label": ""}):
        assert_problem(
            await desk.call("supervisor", "POST", "/v1/outcome-codes", json=body | bad), 422
        )

    theirs = await desk.client.get("/v1/outcome-codes", headers=desk.b.headers["agent"])
    assert "escalated_vendor" not in theirs.text
    page = await desk.call("agent", "GET", "/v1/outcome-codes", params={"limit": 5})
    rest = await desk.call(
        "agent", "GET", "/v1/outcome-codes", params={"cursor": page.json()["next_cursor"]}
    )
    assert [c["code"] for c in page.json()["items"] + rest.json()["items"]] == [
        *seeded,
        "escalated_vendor",
    ]
