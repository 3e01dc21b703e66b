"""The channel account admin API through the real app on SQLite: admins only, bad input
refused with nothing stored, secret references confined to the workspace's directory of
secret files, a taken address is 409, another workspace's accounts are 404, disabling
keeps the account, pages follow the cursor."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any

import pytest
from sqlalchemy import func, select, update

from shared.channels.accounts import MAX_SETTINGS_BYTES
from shared.db.models import Agent, ChannelAccount
from shared.db.session import Database
from tests.integration.test_api_agents import ROOT, Desk, assert_problem, open_desk

PATH = "/v1/channel-accounts"
# Where the operator mounts per-workspace secret files on ingest; the API's check is
# lexical, so nothing needs to exist here.
SECRETS_DIR = PurePosixPath("/run/omni-channel-secrets")
TWILIO = {
    "channel": "sms",
    "adapter": "twilio",
    "address": "+1 (415) 555-0100",
    "display_name": "Acme SMS",
    "secret_ref": "file:twilio-acme",
    "settings": {"messaging_service_sid": "MG0123"},
}


@pytest.fixture
async def desk(database: Database) -> AsyncIterator[Desk]:
    async with open_desk(database, channel_secrets_dir=SECRETS_DIR) as opened:
        yield opened


def secret_file(desk: Desk, name: str) -> str:
    """The reference stored for a file of workspace ``a``."""
    return f"file:{SECRETS_DIR}/{desk.a.workspace_id}/{name}"


async def stored(desk: Desk, workspace_id: uuid.UUID) -> list[ChannelAccount]:
    async with desk.database.sessions() as session:
        return list(
            await session.scalars(
                select(ChannelAccount)
                .where(ChannelAccount.workspace_id == workspace_id)
                .order_by(ChannelAccount.created_at)
            )
        )


async def test_admins_create_read_and_change_an_account(desk: Desk) -> None:
    created = await desk.call("admin_key", "POST", PATH, json=TWILIO)
    assert created.status_code == 201, created.text
    account = created.json()
    assert created.headers["location"] == f"{PATH}/{account['id']}"
    assert account | {"id": None, "created_at": None} == {
        "id": None,
        "created_at": None,
        "channel": "sms",
        "adapter": "twilio",
        "address": "+14155550100",
        "display_name": "Acme SMS",
        "secret_ref": secret_file(desk, "twilio-acme"),
        "settings": {"messaging_service_sid": "MG0123"},
        "enabled": True,
        "webhook_path": f"/v1/channels/twilio/{account['id']}",
    }
    assert (await desk.call("admin", "GET", f"{PATH}/{account['id']}")).json() == account
    [row] = [r for r in await stored(desk, desk.a.workspace_id) if r.channel == "sms"]
    assert (row.address, row.secret_ref) == ("+14155550100", secret_file(desk, "twilio-acme"))

    changed = await desk.call(
        "admin",
        "PATCH",
        f"{PATH}/{account['id']}",
        json={
            "secret_ref": f"file:{SECRETS_DIR}/{desk.a.workspace_id}/sms/twilio",
            "settings": {},
            "display_name": None,
        },
    )
    assert changed.status_code == 200, changed.text
    assert changed.json() | {"secret_ref": None, "settings": None, "display_name": None} == (
        account | {"secret_ref": None, "settings": None, "display_name": None}
    )
    assert (changed.json()["secret_ref"], changed.json()["settings"]) == (
        secret_file(desk, "sms/twilio"),
        {},
    )
    assert changed.json()["display_name"] is None

    email = await desk.call(
        "admin",
        "POST",
        PATH,
        json={"channel": "email", "adapter": "sendgrid", "address": "Help@Acme.example"},
    )
    assert email.json()["address"] == "help@acme.example"
    assert email.json()["webhook_path"] == f"/v1/channels/sendgrid/{email.json()['id']}"
    switched = await desk.call(
        "admin", "PATCH", f"{PATH}/{email.json()['id']}", json={"adapter": "mailgun"}
    )
    assert switched.json()["webhook_path"] == f"/v1/channels/mailgun/{email.json()['id']}"
    smtp = await desk.call(
        "admin",
        "POST",
        PATH,
        json={"channel": "email", "adapter": "email", "address": "mx@acme.example"},
    )
    assert smtp.json()["webhook_path"] is None


async def test_only_admins_manage_channel_accounts(desk: Desk) -> None:
    for who in ("agent", "supervisor", "supervisor_key"):
        assert_problem(await desk.call(who, "POST", PATH, json=TWILIO), 403)
        assert_problem(await desk.call(who, "GET", PATH), 403)
    assert_problem(await desk.client.get(PATH), 401)
    assert [r.channel for r in await stored(desk, desk.a.workspace_id)] == ["email"]  # seeded


async def test_a_demoted_admins_token_loses_the_admin_endpoints_at_once(desk: Desk) -> None:
    assert (await desk.call("admin", "GET", PATH)).status_code == 200
    async with desk.database.sessions() as session:
        await session.execute(
            update(Agent).where(Agent.id == desk.a.agent_ids[ROOT]).values(role="agent")
        )
        await session.commit()
    # The same token, still valid and naming the admin role, now gets the agent's answer.
    assert_problem(await desk.call("admin", "GET", PATH), 403)
    assert_problem(await desk.call("admin", "POST", PATH, json=TWILIO), 403)
    assert (await desk.call("admin", "GET", "/v1/me")).status_code == 200


async def test_bad_input_is_refused_and_nothing_stored(desk: Desk) -> None:
    before = await stored(desk, desk.a.workspace_id)
    bad_bodies: list[dict[str, Any]] = [
        {"channel": "fax"},
        {"channel": "email"},  # twilio serves sms
        {"adapter": "pigeon"},
        {"adapter": "Twilio"},
        {"address": "4155550100"},
        {"address": ""},
        {"secret_ref": "AC123:authtoken"},  # a secret, not a reference
        {"secret_ref": "file:/etc/passwd"},
        {"secret_ref": "env:OMNI_JWT_SECRET"},
        {"settings": ["not", "an", "object"]},
        {"settings": "{}"},
        {"settings": {"blob": "x" * MAX_SETTINGS_BYTES}},
        {"enabled": "maybe"},
        {"workspace_id": str(desk.b.workspace_id)},
        {"secret": "s3cret"},
    ]
    for bad in bad_bodies:
        response = await desk.call("admin", "POST", PATH, json=TWILIO | bad)
        assert_problem(response, 422)
    wrong = await desk.call("admin", "POST", PATH, json=TWILIO | {"channel": "email"})
    assert "serves channel sms" in wrong.text
    broken = await desk.client.post(
        PATH,
        content=b"{not json",
        headers={**desk.a.headers["admin"], "content-type": "application/json"},
    )
    assert_problem(broken, 400)
    assert [r.id for r in await stored(desk, desk.a.workspace_id)] == [r.id for r in before]

    account = (await desk.call("admin", "POST", PATH, json=TWILIO)).json()
    path = f"{PATH}/{account['id']}"
    for bad in (
        {"adapter": "mailgun"},  # an email adapter for an sms account
        {"adapter": "nope"},
        {"address": "+14155550199"},  # the identity of an account does not change
        {"channel": "email"},
        {"secret_ref": "plain"},
        {"settings": [1]},
    ):
        assert_problem(await desk.call("admin", "PATCH", path, json=bad), 422)
    assert (await desk.call("admin", "GET", path)).json() == account
    for params in ({"channel": "fax"}, {"enabled": "perhaps"}, {"limit": 0}):
        assert_problem(await desk.call("admin", "GET", PATH, params=params), 422)
    assert_problem(await desk.call("admin", "GET", PATH, params={"cursor": "garbage"}), 400)


async def test_secret_refs_outside_the_workspaces_directory_are_refused(desk: Desk) -> None:
    """A workspace admin names only files the operator placed for that workspace: not a
    device, not the process's environment, not another tenant's file or variable."""
    before = await stored(desk, desk.a.workspace_id)
    theirs = f"{SECRETS_DIR}/{desk.b.workspace_id}"
    refused = [
        "file:/dev/zero",
        "file:/proc/self/environ",
        "file:/run/secrets/twilio",
        f"file:{theirs}/twilio",
        f"file:{SECRETS_DIR}/{desk.a.workspace_id}/../{desk.b.workspace_id}/twilio",
        "file:../twilio",
        "env:TWILIO_OTHER_TENANT",
        "env:META_OTHER_TENANT",
        "env:OMNI_JWT_SECRET",
    ]
    for reference in refused:
        problem = assert_problem(
            await desk.call("admin", "POST", PATH, json=TWILIO | {"secret_ref": reference}), 422
        )
        assert problem["errors"][0]["loc"] == ["body", "secret_ref"], problem
    assert [r.id for r in await stored(desk, desk.a.workspace_id)] == [r.id for r in before]

    account = (await desk.call("admin", "POST", PATH, json=TWILIO)).json()
    path = f"{PATH}/{account['id']}"
    for reference in refused:
        response = await desk.call("admin", "PATCH", path, json={"secret_ref": reference})
        assert_problem(response, 422)
    assert (await desk.call("admin", "GET", path)).json() == account
    [row] = [r for r in await stored(desk, desk.a.workspace_id) if r.channel == "sms"]
    assert row.secret_ref == secret_file(desk, "twilio-acme")
    cleared = await desk.call("admin", "PATCH", path, json={"secret_ref": None})
    assert cleared.json()["secret_ref"] is None


async def test_without_a_secrets_dir_the_api_takes_no_secret_refs(database: Database) -> None:
    async with open_desk(database) as desk:
        for body in (TWILIO, TWILIO | {"secret_ref": "file:/run/omni/x/twilio"}):
            problem = assert_problem(await desk.call("admin", "POST", PATH, json=body), 422)
            assert "OMNI_CHANNEL_SECRETS_DIR" in problem["detail"]
        assert [r.channel for r in await stored(desk, desk.a.workspace_id)] == ["email"]
        # An account that needs no secret does not need the directory.
        created = await desk.call("admin", "POST", PATH, json=TWILIO | {"secret_ref": None})
        assert created.status_code == 201, created.text
        path = f"{PATH}/{created.json()['id']}"
        assert_problem(await desk.call("admin", "PATCH", path, json={"secret_ref": "file:k"}), 422)
        assert (await desk.call("admin", "PATCH", path, json={"enabled": False})).is_success


async def test_an_address_taken_on_the_channel_is_a_conflict(desk: Desk) -> None:
    first = await desk.call("admin", "POST", PATH, json=TWILIO)
    assert first.status_code == 201, first.text
    again = TWILIO | {"address": "+14155550100", "adapter": "twilio", "display_name": "dup"}
    assert_problem(await desk.call("admin", "POST", PATH, json=again), 409)
    theirs = await desk.client.post(PATH, json=TWILIO, headers=desk.b.headers["admin"])
    conflict = assert_problem(theirs, 409)
    assert str(desk.a.workspace_id) not in conflict["detail"]
    assert first.json()["id"] not in conflict["detail"]
    # Same address on another channel is another account.
    social = await desk.call(
        "admin",
        "POST",
        PATH,
        json={"channel": "social", "adapter": "meta", "address": "+14155550100"},
    )
    assert social.status_code == 201, social.text
    async with desk.database.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(ChannelAccount)
            .where(ChannelAccount.address == "+14155550100")
        )
    assert count == 2


async def test_another_workspaces_accounts_answer_404(desk: Desk) -> None:
    account = (await desk.call("admin", "POST", PATH, json=TWILIO)).json()
    path = f"{PATH}/{account['id']}"
    theirs = desk.b.headers["admin"]
    calls: list[tuple[str, dict[str, Any] | None]] = [
        ("GET", None),
        ("PATCH", {"enabled": False}),
        ("DELETE", None),
    ]
    for method, body in calls:
        assert_problem(await desk.client.request(method, path, headers=theirs, json=body), 404)
    listed = (await desk.client.get(PATH, headers=theirs)).json()["items"]
    assert account["id"] not in {a["id"] for a in listed}
    assert {a["channel"] for a in listed} == {"email"}  # their own seeded account only
    assert (await desk.call("admin", "GET", path)).json() == account


async def test_disabling_keeps_the_account_and_can_be_undone(desk: Desk) -> None:
    account = (await desk.call("admin", "POST", PATH, json=TWILIO)).json()
    path = f"{PATH}/{account['id']}"
    for _ in range(2):
        assert (await desk.call("admin", "DELETE", path)).status_code == 204
    assert (await desk.call("admin", "GET", path)).json()["enabled"] is False
    assert_problem(await desk.call("admin", "POST", PATH, json=TWILIO), 409)  # still taken
    assert_problem(await desk.call("admin", "DELETE", f"{PATH}/{uuid.uuid4()}"), 404)
    enabled = await desk.call("admin", "PATCH", path, json={"enabled": True})
    assert enabled.json() == account


async def test_pages_follow_the_cursor_and_filters_apply(desk: Desk) -> None:
    made = []
    for n in range(5):
        response = await desk.call(
            "admin",
            "POST",
            PATH,
            json=TWILIO | {"address": f"+1415555010{n}", "enabled": n % 2 == 0},
        )
        assert response.status_code == 201, response.text
        made.append(response.json()["id"])
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"channel": "sms", "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await desk.call("admin", "GET", PATH, params=params)).json()
        seen += [a["id"] for a in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (made, 3)
    disabled = (
        await desk.call("admin", "GET", PATH, params={"channel": "sms", "enabled": "false"})
    ).json()
    assert [a["id"] for a in disabled["items"]] == [made[1], made[3]]
    everything = (await desk.call("admin", "GET", PATH)).json()["items"]
    assert [a["channel"] for a in everything] == ["email"] + ["sms"] * 5
