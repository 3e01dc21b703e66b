"""agent_api over real HTTP and WebSockets on SQLite and the in-process bus."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import jwt
import pytest
from sqlalchemy import select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from devmode.seed import DEMO_AGENTS, DEMO_PASSWORD, seed_demo
from services.agent_api.auth import AgentClaims, issue_agent_token
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.db.models import Agent, Conversation, Workspace
from shared.db.session import Database
from shared.events import (
    MessageCreated,
    OutboundMessageRequested,
    Topic,
    decode_event,
)
from shared.problems import PROBLEM_CONTENT_TYPE
from shared.settings import Settings
from tests.unit.test_router import as_record, inbound

ADA, BEN = DEMO_AGENTS[0].email, DEMO_AGENTS[1].email


async def sign_in(api: httpx.AsyncClient, email: str, workspace: str = "demo") -> dict[str, str]:
    response = await api.post(
        "/v1/auth/token", json={"workspace": workspace, "email": email, "password": DEMO_PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"authorization": f"Bearer {response.json()['access_token']}"}


async def agent_socket_url(api: httpx.AsyncClient, query: str = "") -> tuple[str, str]:
    """Ada's token and the agent WebSocket's URL on the served API (with ``query``)."""
    auth = await sign_in(api, ADA)
    ws_url = str(api.base_url).rstrip("/").replace("http://", "ws://") + "/v1/ws" + query
    return auth["authorization"].removeprefix("Bearer "), ws_url


async def assigned_conversation(
    database: Database, bus: MemoryBus, workspace_id: uuid.UUID, session: str = "wcs_a"
) -> Conversation:
    await InboundRouter(database, bus).handle([as_record(inbound(workspace_id, session, "p1"))])
    async with database.sessions() as db:
        conversation = await db.scalar(
            select(Conversation).where(Conversation.workspace_id == workspace_id)
        )
    assert conversation is not None
    return conversation


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    assert response.json()["status"] == status


async def test_sign_in_refuses_wrong_credentials(api: httpx.AsyncClient) -> None:
    wrong_password = await api.post(
        "/v1/auth/token", json={"workspace": "demo", "email": ADA, "password": "nope"}
    )
    wrong_workspace = await api.post(
        "/v1/auth/token", json={"workspace": "other", "email": ADA, "password": DEMO_PASSWORD}
    )
    assert_problem(wrong_password, 401)
    assert_problem(wrong_workspace, 401)


async def test_tokens_are_checked(
    api: httpx.AsyncClient, settings: Settings, workspace_id: uuid.UUID, database: Database
) -> None:
    async with database.sessions() as db:
        ada = await db.scalar(select(Agent).where(Agent.email == ADA))
    assert ada is not None
    claims = AgentClaims(agent_id=ada.id, workspace_id=workspace_id, role="agent")
    expired, _ = issue_agent_token(claims, settings, now=datetime.now(UTC) - timedelta(days=2))
    wrong_key = jwt.encode(
        {
            "sub": str(ada.id),
            "ws": str(workspace_id),
            "iss": "omniroute",
            "aud": "omniroute-agent-api",
            "iat": datetime.now(UTC),
            "exp": datetime.now(UTC) + timedelta(hours=1),
        },
        "another-key-" * 4,
        algorithm="HS256",
    )
    unsigned = jwt.encode(
        {
            "sub": str(ada.id),
            "ws": str(workspace_id),
            "iss": "omniroute",
            "aud": "omniroute-agent-api",
            "iat": datetime.now(UTC),
            "exp": datetime.now(UTC) + timedelta(hours=1),
        },
        None,
        algorithm="none",
    )
    wrong_audience = jwt.encode(
        {
            "sub": str(ada.id),
            "ws": str(workspace_id),
            "iss": "omniroute",
            "aud": "elsewhere",
            "iat": datetime.now(UTC),
            "exp": datetime.now(UTC) + timedelta(hours=1),
        },
        settings.jwt_secret.get_secret_value(),
        algorithm="HS256",
    )

    for token in (expired, wrong_key, unsigned, wrong_audience, "garbage"):
        assert_problem(await api.get("/v1/me", headers={"authorization": f"Bearer {token}"}), 401)
    assert_problem(await api.get("/v1/me"), 401)
    ok = await api.get("/v1/me", headers=await sign_in(api, ADA))
    assert ok.json()["email"] == ADA


async def test_status_changes_and_invalid_status_is_refused(api: httpx.AsyncClient) -> None:
    auth = await sign_in(api, BEN)

    online = await api.put("/v1/me/status", json={"status": "online"}, headers=auth)
    invalid = await api.put("/v1/me/status", json={"status": "asleep"}, headers=auth)

    assert online.json()["status"] == "online"
    assert_problem(invalid, 422)


async def test_the_owner_replies_and_the_reply_leaves_through_the_outbox(
    api: httpx.AsyncClient, database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    conversation = await assigned_conversation(database, memory_bus, workspace_id)
    auth = await sign_in(api, ADA)

    listed = await api.get("/v1/conversations", headers=auth)
    replied = await api.post(
        f"/v1/conversations/{conversation.id}/replies", json={"text": "On its way"}, headers=auth
    )
    messages = await api.get(f"/v1/conversations/{conversation.id}/messages", headers=auth)

    assert [c["id"] for c in listed.json()["items"]] == [str(conversation.id)]
    assert replied.status_code == 201
    assert [m["direction"] for m in messages.json()] == ["inbound", "outbound"]
    [outbound] = [decode_event(r) for r in memory_bus.records(Topic.OUTBOUND.value)]
    assert isinstance(outbound.data, OutboundMessageRequested)
    assert outbound.data.recipient_address == "wcs_a"
    assert outbound.data.text == "On its way"
    last_event = decode_event(memory_bus.records(Topic.EVENTS.value)[-1])
    assert isinstance(last_event.data, MessageCreated)
    assert last_event.data.direction.value == "outbound"


async def test_only_the_owner_may_reply(
    api: httpx.AsyncClient, database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    conversation = await assigned_conversation(database, memory_bus, workspace_id)

    response = await api.post(
        f"/v1/conversations/{conversation.id}/replies",
        json={"text": "not mine"},
        headers=await sign_in(api, BEN),
    )

    assert_problem(response, 403)
    assert memory_bus.records(Topic.OUTBOUND.value) == []


async def test_another_workspace_sees_nothing(
    api: httpx.AsyncClient, database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    conversation = await assigned_conversation(database, memory_bus, workspace_id)
    await seed_demo(database, slug="other")
    outsider = await sign_in(api, ADA, workspace="other")

    for path in (
        f"/v1/conversations/{conversation.id}",
        f"/v1/conversations/{conversation.id}/messages",
    ):
        assert_problem(await api.get(path, headers=outsider), 404)
    reply = await api.post(
        f"/v1/conversations/{conversation.id}/replies", json={"text": "x"}, headers=outsider
    )
    assert_problem(reply, 404)
    assert (await api.get("/v1/conversations", headers=outsider)).json()["items"] == []


async def test_bad_cursor_and_bad_ids_are_client_errors(api: httpx.AsyncClient) -> None:
    auth = await sign_in(api, ADA)
    assert_problem(await api.get("/v1/conversations?cursor=%%%", headers=auth), 400)
    assert_problem(await api.get("/v1/conversations/not-a-uuid", headers=auth), 422)
    assert_problem(await api.get(f"/v1/conversations/{uuid.uuid4()}", headers=auth), 404)


async def test_bad_input_problems_carry_one_title_per_status(api: httpx.AsyncClient) -> None:
    """A validation error and text PostgreSQL cannot store are both 422: one title
    (the status phrase of RFC 9110, as RFC 9457 asks of ``about:blank`` problems),
    whichever layer refused the request; what went wrong is in ``detail``."""
    missing_field = await api.post("/v1/auth/token", json={"workspace": "demo"})
    nul_in_text = await api.post(
        "/v1/auth/token",
        content=b'{"workspace": "demo", "email": "a\\u0000b", "password": "x"}',
        headers={"content-type": "application/json"},
    )
    assert_problem(missing_field, 422)
    assert_problem(nul_in_text, 422)
    not_json = await api.post(
        "/v1/auth/token", content=b"{", headers={"content-type": "application/json"}
    )
    assert_problem(not_json, 400)
    assert missing_field.json()["title"] == nul_in_text.json()["title"] == "Unprocessable Content"
    assert not_json.json()["title"] == "Bad Request"


async def test_websocket_refuses_bad_tokens_with_4401(api_url: str) -> None:
    ws_url = api_url.replace("http://", "ws://") + "/v1/ws"
    async with connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": "garbage"}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401


@pytest.mark.parametrize("last_seq", ["-1", "abc", "1.5", str(2**63), "9" * 23])
async def test_websocket_refuses_a_malformed_last_seq_with_a_problem(
    api_url: str, last_seq: str
) -> None:
    ws_url = api_url.replace("http://", "ws://") + f"/v1/ws?last_seq={last_seq}"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url):
            pass
    response = refused.value.response
    assert response.status_code == 400
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    problem = json.loads(response.body)
    assert problem["status"] == 400
    assert "last_seq" in problem["detail"]


async def test_websocket_resets_a_last_seq_beyond_the_stream(
    api: httpx.AsyncClient,
    database: Database,
    memory_bus: MemoryBus,
    workspace_id: uuid.UUID,
) -> None:
    """A client holding a position the stream never reached (e.g. across a database
    restore) is told to refetch, then gets live frames: not silence up to its number."""
    token, ws_url = await agent_socket_url(api, f"?last_seq={2**63 - 1}")
    await assigned_conversation(database, memory_bus, workspace_id)
    async with connect(ws_url, subprotocols=["bearer", token]) as ws:  # type: ignore[list-item]
        reset = json.loads(await asyncio.wait_for(ws.recv(), 5))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await InboundRouter(database, memory_bus).handle(
            [as_record(inbound(workspace_id, "wcs_a", "p2", "still there?"))]
        )
        live = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert reset["type"] == "reset"
    assert ready["type"] == "ready"
    assert (live["type"], live["data"]["text"]) == ("message.created", "still there?")
    assert ready["seq"] < live["seq"]


async def test_websocket_pushes_events_and_replays_after_last_seq(
    api: httpx.AsyncClient,
    database: Database,
    memory_bus: MemoryBus,
    workspace_id: uuid.UUID,
) -> None:
    token, ws_url = await agent_socket_url(api)
    async with connect(ws_url, subprotocols=["bearer", token]) as ws:  # type: ignore[list-item]
        assert json.loads(await ws.recv())["type"] == "ready"
        await assigned_conversation(database, memory_bus, workspace_id)
        live = [json.loads(await ws.recv()) for _ in range(2)]
    assert [f["type"] for f in live] == ["conversation.assigned", "message.created"]

    first_seq = live[0]["seq"]
    async with connect(f"{ws_url}?last_seq={first_seq}") as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        replayed = json.loads(await ws.recv())
        ready = json.loads(await ws.recv())
    assert replayed["type"] == "message.created"
    assert replayed["seq"] == live[1]["seq"]
    assert ready["type"] == "ready"


async def test_a_time_with_another_offset_is_compared_as_the_same_instant(
    database: Database, workspace_id: uuid.UUID
) -> None:
    """SQLite (dev mode) compares stored text: 10:00+02:00 must mean 08:00 UTC there too."""
    stored = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    async with database.sessions() as session:
        workspace = await session.get(Workspace, workspace_id)
        assert workspace is not None
        workspace.created_at = stored
        await session.commit()
        plus_two = timezone(timedelta(hours=2))
        found = await session.scalar(
            select(Workspace.id).where(
                Workspace.id == workspace_id,
                Workspace.created_at >= datetime(2026, 1, 1, 9, 30, tzinfo=plus_two),
                Workspace.created_at < datetime(2026, 1, 1, 10, 30, tzinfo=plus_two),
            )
        )
        reread = await session.scalar(
            select(Workspace.created_at).where(Workspace.id == workspace_id)
        )
    assert found == workspace_id
    assert reread == stored


async def test_timestamps_in_answers_carry_their_offset(
    api: httpx.AsyncClient, database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    """SQLite (dev mode) stores no zone; answers still say UTC, as on PostgreSQL (a
    client would read a bare ``2026-01-01T10:00:00`` as its own local time)."""
    conversation = await assigned_conversation(database, memory_bus, workspace_id)
    auth = await sign_in(api, ADA)
    shown = await api.get(f"/v1/conversations/{conversation.id}", headers=auth)
    listed = await api.get(f"/v1/conversations/{conversation.id}/messages", headers=auth)
    assert shown.status_code == listed.status_code == 200
    stamps = {
        key: value
        for item in [shown.json(), *listed.json()]
        for key, value in item.items()
        if key.endswith("_at") and value is not None
    }
    assert {"created_at", "last_message_at", "first_response_at"} & stamps.keys()
    naive = {k: v for k, v in stamps.items() if datetime.fromisoformat(v).tzinfo is None}
    assert naive == {}


def test_tokens_name_their_key_and_rotation_keeps_old_tokens_valid() -> None:
    from pydantic import SecretStr

    from services.agent_api.auth import verify_agent_token
    from shared.websocket import TokenRejectedError

    claims = AgentClaims(agent_id=uuid.uuid4(), workspace_id=uuid.uuid4(), role="agent")
    old = Settings(jwt_keys={"2026-01": SecretStr("k" * 40)}, jwt_active_kid="2026-01")
    rotated = Settings(
        jwt_keys={"2026-01": SecretStr("k" * 40), "2026-06": SecretStr("n" * 40)},
        jwt_active_kid="2026-06",
    )
    retired = Settings(jwt_keys={"2026-06": SecretStr("n" * 40)}, jwt_active_kid="2026-06")
    token, _ = issue_agent_token(claims, old)
    new_token, _ = issue_agent_token(claims, rotated)

    assert jwt.get_unverified_header(token)["kid"] == "2026-01"
    assert jwt.get_unverified_header(new_token)["kid"] == "2026-06"
    assert verify_agent_token(token, rotated).agent_id == claims.agent_id
    assert verify_agent_token(new_token, retired).agent_id == claims.agent_id
    with pytest.raises(TokenRejectedError):
        verify_agent_token(token, retired)
