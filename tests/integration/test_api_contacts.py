"""Contacts on PostgreSQL: search, the unified profile, edit, merge; other workspaces'
contacts answer 404 and never appear."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from shared.db.models import Contact, ContactIdentity, Conversation
from shared.db.session import Database
from tests.integration.test_api_agents import (
    ADA,
    Desk,
    assert_problem,
    open_desk,
    queued_conversation,
)

pytestmark = pytest.mark.integration


@dataclass
class People:
    pat: uuid.UUID  # "Pat Doe": email + sms, one conversation assigned to Ada
    dup: uuid.UUID  # "P. D.": a web chat identity, one queued conversation
    lee: uuid.UUID  # "Lee": email with a literal underscore
    theirs: uuid.UUID  # "Pat Other" in workspace b


async def contact(
    database: Database, workspace_id: uuid.UUID, name: str, *identities: tuple[str, str]
) -> uuid.UUID:
    async with database.sessions() as session:
        row = Contact(id=uuid.uuid4(), workspace_id=workspace_id, display_name=name)
        session.add(row)
        await session.flush()
        for channel, address in identities:
            session.add(
                ContactIdentity(
                    workspace_id=workspace_id, contact_id=row.id, channel=channel, address=address
                )
            )
        await session.commit()
        return row.id


@pytest.fixture
async def desk(pg_database: Database) -> AsyncIterator[Desk]:
    async with open_desk(pg_database) as opened:
        yield opened


@pytest.fixture
async def people(desk: Desk) -> People:
    db, a = desk.database, desk.a.workspace_id
    tag = uuid.uuid4().hex[:6]
    pat = await contact(
        db, a, "Pat Doe", ("email", f"pat-{tag}@example.com"), ("sms", f"+1555{tag}")
    )
    dup = await contact(db, a, "P. D.", ("webchat", f"wcs_{tag}"))
    lee = await contact(db, a, "Lee", ("email", f"lee_{tag}@example.com"))
    theirs = await contact(db, desk.b.workspace_id, "Pat Other", ("email", f"o-{tag}@x.com"))
    assigned = await queued_conversation(db, a, contact_id=pat, channel="email")
    async with db.sessions() as session:
        conversation = await session.get(Conversation, assigned)
        assert conversation is not None
        conversation.status = "assigned"
        conversation.assignee_agent_id = desk.a.agent_ids[ADA]
        await session.commit()
    await queued_conversation(db, a, contact_id=dup, waiting_seconds=5)
    return People(pat, dup, lee, theirs)


async def test_search_by_name_or_address_stays_in_the_workspace(desk: Desk, people: People) -> None:
    async def ids(**params: object) -> list[str]:
        response = await desk.call("agent", "GET", "/v1/contacts", params=params)
        assert response.status_code == 200, response.text
        return [c["id"] for c in response.json()["items"]]

    everyone = await ids()
    assert everyone == [str(people.lee), str(people.dup), str(people.pat)]  # newest first
    assert str(people.theirs) not in everyone
    assert await ids(q="PAT") == [str(people.pat)]
    assert await ids(q="+1555") == [str(people.pat)]
    assert await ids(q="wcs_") == [str(people.dup)]
    assert await ids(q="%") == []  # wildcards are literal
    assert await ids(q="_") == [str(people.lee), str(people.dup)]
    assert await ids(q="Other") == []
    page1 = (await desk.call("agent", "GET", "/v1/contacts", params={"limit": 2})).json()
    page2 = (
        await desk.call(
            "agent", "GET", "/v1/contacts", params={"limit": 2, "cursor": page1["next_cursor"]}
        )
    ).json()
    assert [c["id"] for c in page1["items"] + page2["items"]] == everyone
    assert page2["next_cursor"] is None
    [listed_pat] = [c for c in page1["items"] + page2["items"] if c["id"] == str(people.pat)]
    assert sorted(i["channel"] for i in listed_pat["identities"]) == ["email", "sms"]

    assert_problem(await desk.call("agent", "GET", "/v1/contacts", params={"q": ""}), 422)
    assert_problem(await desk.call("agent", "GET", "/v1/contacts", params={"cursor": "x"}), 400)
    assert_problem(await desk.client.get("/v1/contacts"), 401)


async def test_the_profile_unifies_identities_and_conversations(desk: Desk, people: People) -> None:
    for who in ("agent", "supervisor_key"):
        response = await desk.call(who, "GET", f"/v1/contacts/{people.pat}")
        assert response.status_code == 200, response.text
    profile = response.json()
    assert (profile["display_name"], profile["vip"], profile["merged_into_contact_id"]) == (
        "Pat Doe",
        False,
        None,
    )
    assert sorted(i["channel"] for i in profile["identities"]) == ["email", "sms"]
    [conversation] = profile["conversations"]
    assert (conversation["channel"], conversation["status"]) == ("email", "assigned")
    assert conversation["assignee_agent_id"] == str(desk.a.agent_ids[ADA])
    assert conversation["assignee_display_name"] == "Ada (tier 1)"
    assert profile["conversation_count"] == 1

    other = await desk.call("agent", "GET", f"/v1/contacts/{people.theirs}")
    assert "Pat Other" not in assert_problem(other, 404)["detail"]
    assert_problem(await desk.call("agent", "GET", f"/v1/contacts/{uuid.uuid4()}"), 404)


async def test_anyone_renames_supervisors_set_vip(desk: Desk, people: People) -> None:
    path = f"/v1/contacts/{people.pat}"
    renamed = await desk.call("agent", "PATCH", path, json={"display_name": "Pat D."})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["display_name"] == "Pat D."
    assert_problem(await desk.call("agent", "PATCH", path, json={"vip": True}), 403)
    vip = await desk.call("supervisor", "PATCH", path, json={"vip": True})
    assert vip.json()["vip"] is True
    cleared = await desk.call("agent", "PATCH", path, json={"display_name": None})
    assert cleared.json()["display_name"] is None
    assert cleared.json()["vip"] is True
    assert_problem(await desk.call("agent", "PATCH", path, json={"vip": "sure"}), 422)
    assert_problem(await desk.call("agent", "PATCH", path, json={"phone": "1"}), 422)

    theirs = await desk.call(
        "admin", "PATCH", f"/v1/contacts/{people.theirs}", json={"display_name": "hacked"}
    )
    assert_problem(theirs, 404)
    async with desk.database.sessions() as session:
        other = await session.get(Contact, people.theirs)
    assert other is not None
    assert other.display_name == "Pat Other"


async def test_merging_moves_identities_and_conversations_and_leaves_a_pointer(
    desk: Desk, people: People
) -> None:
    path = f"/v1/contacts/{people.pat}/merge"
    body = {"other_contact_id": str(people.dup)}
    assert_problem(await desk.call("agent", "POST", path, json=body), 403)
    async with desk.database.sessions() as session:
        dup = await session.get(Contact, people.dup)
        assert dup is not None
        dup.vip = True
        await session.commit()

    merged = await desk.call("supervisor", "POST", path, json=body)
    assert merged.status_code == 200, merged.text
    profile = merged.json()
    assert sorted(i["channel"] for i in profile["identities"]) == ["email", "sms", "webchat"]
    assert profile["conversation_count"] == 2
    assert {c["status"] for c in profile["conversations"]} == {"assigned", "queued"}
    assert profile["vip"] is True

    pointer = (await desk.call("agent", "GET", f"/v1/contacts/{people.dup}")).json()
    assert pointer["merged_into_contact_id"] == str(people.pat)
    assert (pointer["identities"], pointer["conversations"]) == ([], [])
    async with desk.database.sessions() as session:
        moved = await session.scalar(
            select(Conversation.contact_id).where(
                Conversation.workspace_id == desk.a.workspace_id,
                Conversation.contact_id == people.dup,
            )
        )
    assert moved is None
    listed = await desk.call("agent", "GET", "/v1/contacts")
    assert str(people.dup) not in {c["id"] for c in listed.json()["items"]}
    with_merged = await desk.call("agent", "GET", "/v1/contacts", params={"include_merged": True})
    assert str(people.dup) in {c["id"] for c in with_merged.json()["items"]}

    assert_problem(await desk.call("supervisor", "POST", path, json=body), 409)
    into_merged = await desk.call(
        "supervisor",
        "POST",
        f"/v1/contacts/{people.dup}/merge",
        json={"other_contact_id": str(people.lee)},
    )
    assert_problem(into_merged, 409)
    itself = await desk.call("supervisor", "POST", path, json={"other_contact_id": str(people.pat)})
    assert_problem(itself, 409)
    rename_merged = await desk.call(
        "agent", "PATCH", f"/v1/contacts/{people.dup}", json={"display_name": "x"}
    )
    assert_problem(rename_merged, 409)

    # Merging the survivor on keeps pointers one hop long.
    onward = await desk.call(
        "admin_key",
        "POST",
        f"/v1/contacts/{people.lee}/merge",
        json={"other_contact_id": str(people.pat)},
    )
    assert onward.status_code == 200, onward.text
    assert onward.json()["conversation_count"] == 2
    again = (await desk.call("agent", "GET", f"/v1/contacts/{people.dup}")).json()
    assert again["merged_into_contact_id"] == str(people.lee)


async def test_merging_across_workspaces_is_404_and_changes_nothing(
    desk: Desk, people: People
) -> None:
    steal = await desk.call(
        "admin",
        "POST",
        f"/v1/contacts/{people.pat}/merge",
        json={"other_contact_id": str(people.theirs)},
    )
    push = await desk.call(
        "admin",
        "POST",
        f"/v1/contacts/{people.theirs}/merge",
        json={"other_contact_id": str(people.pat)},
    )
    assert_problem(steal, 404)
    assert_problem(push, 404)
    async with desk.database.sessions() as session:
        identities = list(
            await session.scalars(
                select(ContactIdentity.contact_id).where(
                    ContactIdentity.contact_id.in_([people.pat, people.theirs])
                )
            )
        )
        theirs = await session.get(Contact, people.theirs)
    assert sorted(map(str, identities)) == sorted(map(str, [people.pat, people.pat, people.theirs]))
    assert theirs is not None
    assert theirs.merged_into_contact_id is None
    bad = await desk.call(
        "admin", "POST", f"/v1/contacts/{people.pat}/merge", json={"other_contact_id": "nope"}
    )
    assert_problem(bad, 422)
