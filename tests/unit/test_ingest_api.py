"""ingest's web-chat surface over real HTTP: happy path, bad input, broker trouble."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from services.ingest.adapters.webchat import ChatSession, issue_session_token
from services.ingest.app import create_app
from services.ingest.front import IngestApi
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.bus.port import OutgoingRecord
from shared.db.models import Conversation, Message
from shared.db.session import Database
from shared.events import Channel, MessageReceived, Topic, decode_event
from shared.problems import PROBLEM_CONTENT_TYPE
from shared.settings import Settings
from tests.conftest import served


@pytest.fixture
async def ingest(
    settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, bus=memory_bus, database=database)
    async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


async def open_session(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    response = await client.post("/v1/webchat/demo/sessions", json={"display_name": "Grace"})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["session_id"], {"authorization": f"Bearer {body['session_token']}"}


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]


async def test_a_message_is_published_once_acknowledged(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    session_id, auth = await open_session(ingest)

    response = await ingest.post(
        f"/v1/webchat/sessions/{session_id}/messages",
        json={"text": "Where is my order?", "client_message_id": "m-1"},
        headers=auth,
    )

    assert response.status_code == 202
    assert response.json()["message_id"] == f"{session_id}:m-1"
    [record] = memory_bus.records(Topic.INBOUND.value)
    assert record.key == f"{workspace_id}:webchat:{session_id}".encode()
    event = decode_event(record)
    assert isinstance(event.data, MessageReceived)
    assert event.data.channel is Channel.WEBCHAT
    assert event.data.thread_key == session_id
    assert event.data.sender.display_name == "Grace"
    assert event.data.text == "Where is my order?"


async def test_a_retried_post_carries_the_same_provider_id(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus
) -> None:
    session_id, auth = await open_session(ingest)
    url = f"/v1/webchat/sessions/{session_id}/messages"
    body = {"text": "hello", "client_message_id": "retry-1"}

    first = await ingest.post(url, json=body, headers=auth)
    second = await ingest.post(url, json=body, headers=auth)

    assert first.json()["message_id"] == second.json()["message_id"]
    payloads = [decode_event(r).data for r in memory_bus.records(Topic.INBOUND.value)]
    ids = {p.provider_message_id for p in payloads if isinstance(p, MessageReceived)}
    assert ids == {f"{session_id}:retry-1"}


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        pytest.param(b"{not json", {"content-type": "application/json"}, 400, id="bad json"),
        pytest.param(b"{}", {"content-type": "application/json"}, 422, id="missing text"),
        pytest.param(b'{"text": ""}', {"content-type": "application/json"}, 422, id="empty text"),
        pytest.param(b'{"text": "   "}', {"content-type": "application/json"}, 422, id="blank"),
        pytest.param(b'{"text": 5}', {"content-type": "application/json"}, 422, id="wrong type"),
        pytest.param(
            b'{"text": "hi", "admin": true}', {"content-type": "application/json"}, 422, id="extra"
        ),
        pytest.param(
            b'{"text": "hi", "client_message_id": "../../etc"}',
            {"content-type": "application/json"},
            422,
            id="bad client id",
        ),
        pytest.param(b'["hi"]', {"content-type": "application/json"}, 422, id="array"),
        pytest.param(b"text=hi", {"content-type": "text/plain"}, 422, id="wrong content type"),
        pytest.param(
            b'{"text": "' + b"x" * 5000 + b'"}',
            {"content-type": "application/json"},
            422,
            id="too long",
        ),
        pytest.param(
            b'{"text": "' + b"x" * 70_000 + b'"}',
            {"content-type": "application/json"},
            413,
            id="oversized body",
        ),
    ],
)
async def test_bad_input_gets_a_problem_and_publishes_nothing(
    ingest: httpx.AsyncClient,
    memory_bus: MemoryBus,
    content: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    session_id, auth = await open_session(ingest)

    response = await ingest.post(
        f"/v1/webchat/sessions/{session_id}/messages", content=content, headers=auth | headers
    )

    assert_problem(response, status)
    assert memory_bus.records(Topic.INBOUND.value) == []


async def test_an_oversized_chunked_body_is_refused(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus
) -> None:
    session_id, auth = await open_session(ingest)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}'

    response = await ingest.post(
        f"/v1/webchat/sessions/{session_id}/messages",
        content=chunks(),
        headers=auth | {"content-type": "application/json"},
    )

    assert_problem(response, 413)
    assert memory_bus.records(Topic.INBOUND.value) == []


async def test_sessions_are_checked(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, settings: Settings, workspace_id: uuid.UUID
) -> None:
    session_id, auth = await open_session(ingest)
    other_id, _ = await open_session(ingest)
    expired, _ = issue_session_token(
        ChatSession(session_id, workspace_id, None),
        secret=settings.chat_session_secret.get_secret_value(),
        ttl=timedelta(seconds=60),
        now=datetime.now(UTC) - timedelta(hours=1),
    )
    forged, _ = issue_session_token(
        ChatSession(session_id, workspace_id, None),
        secret="not-the-secret-" * 3,
        ttl=timedelta(seconds=60),
    )
    body = {"text": "hi"}

    no_token = await ingest.post(f"/v1/webchat/sessions/{session_id}/messages", json=body)
    other_session = await ingest.post(
        f"/v1/webchat/sessions/{other_id}/messages", json=body, headers=auth
    )
    unknown = await ingest.post("/v1/webchat/sessions/wcs_nope/messages", json=body, headers=auth)
    expired_token = await ingest.post(
        f"/v1/webchat/sessions/{session_id}/messages",
        json=body,
        headers={"authorization": f"Bearer {expired}"},
    )
    forged_token = await ingest.post(
        f"/v1/webchat/sessions/{session_id}/messages",
        json=body,
        headers={"authorization": f"Bearer {forged}"},
    )

    assert_problem(no_token, 401)
    assert_problem(other_session, 404)
    assert_problem(unknown, 404)
    assert_problem(expired_token, 401)
    assert_problem(forged_token, 401)
    assert memory_bus.records(Topic.INBOUND.value) == []


async def test_an_unknown_workspace_has_no_chat(ingest: httpx.AsyncClient) -> None:
    assert_problem(await ingest.post("/v1/webchat/nope/sessions", json={}), 404)


class UnavailableBus(MemoryBus):
    async def publish_many(self, records: Sequence[OutgoingRecord]) -> None:  # noqa: ARG002
        raise ConnectionError("broker down")


async def test_no_broker_ack_means_503_so_the_client_retries(
    settings: Settings, database: Database, workspace_id: uuid.UUID
) -> None:
    app = create_app(settings, bus=UnavailableBus(), database=database)
    async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
        session_id, auth = await open_session(client)
        response = await client.post(
            f"/v1/webchat/sessions/{session_id}/messages", json={"text": "hi"}, headers=auth
        )
        ready = await client.get("/readyz")

    assert_problem(response, 503)
    assert ready.status_code == 200  # the in-process twin reports healthy; publish failed


async def test_the_customer_reads_the_conversation_history_without_internal_notes(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, database: Database
) -> None:
    session_id, auth = await open_session(ingest)
    await ingest.post(
        f"/v1/webchat/sessions/{session_id}/messages", json={"text": "first"}, headers=auth
    )
    before = (await ingest.get(f"/v1/webchat/sessions/{session_id}/messages", headers=auth)).json()
    await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))
    async with database.sessions() as session:
        conversation = await session.scalar(select(Conversation))
        assert conversation is not None
        session.add(
            Message(
                workspace_id=conversation.workspace_id,
                conversation_id=conversation.id,
                channel="webchat",
                direction="note",
                text="internal: VIP customer",
            )
        )
        session.add(
            Message(
                workspace_id=conversation.workspace_id,
                conversation_id=conversation.id,
                channel="webchat",
                direction="system",
                text="Cy from billing takes over.",
            )
        )
        await session.commit()

    history = await ingest.get(f"/v1/webchat/sessions/{session_id}/messages", headers=auth)
    other_id, _ = await open_session(ingest)
    foreign = await ingest.get(f"/v1/webchat/sessions/{other_id}/messages", headers=auth)

    assert before == {"conversation_id": None, "messages": []}
    # What the customer was sent (a system notice too) but never an internal note.
    assert [m["text"] for m in history.json()["messages"]] == [
        "first",
        "Cy from billing takes over.",
    ]
    assert_problem(foreign, 404)


async def test_an_email_given_at_the_start_travels_as_a_contact_identity(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus
) -> None:
    opened = await ingest.post(
        "/v1/webchat/demo/sessions", json={"display_name": "Grace", "email": "Grace@Example.com"}
    )
    assert opened.status_code == 201, opened.text
    body = opened.json()

    posted = await ingest.post(
        body["messages_url"],
        json={"text": "hi"},
        headers={"authorization": f"Bearer {body['session_token']}"},
    )
    invalid = await ingest.post("/v1/webchat/demo/sessions", json={"email": "not-an-address"})

    assert posted.status_code == 202
    [record] = memory_bus.records(Topic.INBOUND.value)
    event = decode_event(record)
    assert isinstance(event.data, MessageReceived)
    assert [(c.kind.value, c.address) for c in event.data.sender.identities] == [
        ("email", "grace@example.com")
    ]
    assert_problem(invalid, 422)


async def test_the_hot_routes_keep_what_the_middleware_stack_gave_them(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Web-chat messages and provider webhooks are served ahead of FastAPI's stack
    (services/ingest/front.py): they still echo the correlation id, answer problems
    as problem+json, an unexpected failure as a 500 problem, unavailable infrastructure
    as a 503 problem to retry."""
    session_id, auth = await open_session(ingest)
    url = f"/v1/webchat/sessions/{session_id}/messages"
    traced = {"x-correlation-id": "corr-hot-route-1"}

    accepted = await ingest.post(url, json={"text": "hi"}, headers=auth | traced)
    assert accepted.status_code == 202
    assert accepted.headers["x-correlation-id"] == "corr-hot-route-1"

    unauthorized = await ingest.post(url, json={"text": "hi"}, headers=traced)
    assert_problem(unauthorized, 401)
    assert unauthorized.headers["www-authenticate"] == "Bearer"
    assert unauthorized.headers["x-correlation-id"] == "corr-hot-route-1"

    no_adapter = await ingest.post(f"/v1/channels/nope/{uuid.uuid4()}", content=b"x")
    assert_problem(no_adapter, 404)
    assert no_adapter.headers["x-correlation-id"]  # a new one when none was sent

    def broken(*_: object) -> None:
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr("services.ingest.adapters.webchat_endpoints.take_message_token", broken)
    failed = await ingest.post(url, json={"text": "hi"}, headers=auth)
    assert_problem(failed, 500)

    def database_restarting(*_: object) -> None:
        raise OperationalError("SELECT 1", {}, ConnectionResetError("connection was closed"))

    monkeypatch.setattr(
        "services.ingest.adapters.webchat_endpoints.take_message_token", database_restarting
    )
    unavailable = await ingest.post(url, json={"text": "hi"}, headers=auth)
    assert_problem(unavailable, 503)
    assert unavailable.headers["retry-after"] == "1"
    assert len(memory_bus.records(Topic.INBOUND.value)) == 1  # only the accepted one


@pytest.mark.parametrize(
    "template",
    [
        "/v1/channels/{adapter_name}/{account_id}",
        "/v1/channels/{adapter_name}/{account_id}/{variant}",
        "/v1/webchat/sessions/{session_id}/messages",
    ],
)
def test_the_hot_routes_are_the_declared_ones(settings: Settings, template: str) -> None:
    """The front names each request after the declared route (traces, logs); it must
    find it among FastAPI's routes."""
    app = create_app(settings)
    assert isinstance(app, IngestApi)
    assert app._declared_route(template) is not None
