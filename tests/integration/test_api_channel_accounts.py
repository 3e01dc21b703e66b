"""Channel accounts on PostgreSQL: the unique (channel, address) constraint decides
conflicts, also between concurrent creates from two workspaces, and its violation is a
409 problem, never a 500, with exactly one account stored; no other violation is taken
for a taken address."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.agent_api.channel_accounts import service
from services.agent_api.channel_accounts.schemas import ChannelAccountCreate
from shared.db.models import ChannelAccount
from shared.db.session import Database
from shared.problems import PROBLEM_CONTENT_TYPE
from tests.integration.test_api_agents import Desk, assert_problem, open_desk

pytestmark = pytest.mark.integration

PATH = "/v1/channel-accounts"


@pytest.fixture
async def desk(pg_database: Database) -> AsyncIterator[Desk]:
    async with open_desk(pg_database) as opened:
        yield opened


def new_number() -> str:
    """A number no other test of the session uses (the constraint spans workspaces)."""
    return f"+1 415 {random.randrange(10**7):07d}"  # noqa: S311 - not a secret


async def stored(desk: Desk, address: str) -> list[ChannelAccount]:
    async with desk.database.sessions() as session:
        return list(
            await session.scalars(
                select(ChannelAccount).where(
                    ChannelAccount.channel == "sms", ChannelAccount.address == address
                )
            )
        )


async def test_a_taken_address_is_409_and_nothing_is_stored(desk: Desk) -> None:
    body = {"channel": "sms", "adapter": "twilio", "address": new_number()}
    created = await desk.call("admin", "POST", PATH, json=body)
    assert created.status_code == 201, created.text
    address = created.json()["address"]

    spelled_otherwise = body | {"address": address.replace("+1", "+1 (", 1)}
    for headers, request in ((desk.a.headers["admin"], body), (desk.b.headers["admin"], body)):
        assert_problem(await desk.client.post(PATH, json=request, headers=headers), 409)
    assert_problem(await desk.call("admin_key", "POST", PATH, json=spelled_otherwise), 409)
    # The session that hit the violation is rolled back: the API keeps answering.
    assert (await desk.call("admin", "GET", f"{PATH}/{created.json()['id']}")).status_code == 200
    assert [str(r.id) for r in await stored(desk, address)] == [created.json()["id"]]


async def test_concurrent_creates_of_one_address_store_one_and_conflict_the_rest(
    desk: Desk,
) -> None:
    body = {"channel": "sms", "adapter": "twilio", "address": new_number()}
    callers = [desk.a.headers["admin"], desk.b.headers["admin"]] * 4

    async def create(headers: dict[str, str]) -> httpx.Response:
        return await desk.client.post(PATH, json=body, headers=headers)

    answers = await asyncio.gather(*(create(h) for h in callers))

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] + [409] * (len(callers) - 1), [a.text for a in answers]
    for conflict in (a for a in answers if a.status_code == 409):
        assert conflict.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    [winner] = [a.json() for a in answers if a.status_code == 201]
    rows = await stored(desk, winner["address"])
    assert [(str(r.id), r.address) for r in rows] == [(winner["id"], winner["address"])]


async def test_only_the_address_constraint_is_a_taken_address(desk: Desk) -> None:
    """A workspace that does not exist violates the foreign key, not the address's
    uniqueness: the error surfaces as what it is instead of a misleading 409."""
    body = ChannelAccountCreate.model_validate(
        {"channel": "sms", "adapter": "twilio", "address": new_number()}
    )
    async with desk.database.sessions() as session:
        with pytest.raises(IntegrityError, match="foreign key"):
            await service.create_account(session, uuid.uuid4(), body, secrets_dir=None)
    assert await stored(desk, body.address) == []
