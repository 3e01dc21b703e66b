"""Web chat's origin allow-list (admin settings, enforcement on every customer surface,
the chat page's frame-ancestors) and the per-session message rate limit."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin as WsOrigin

from devmode.seed import seed_demo
from services.agent_api.app import create_app as create_agent_api
from services.agent_api.auth import AgentClaims, issue_agent_token
from services.ingest.app import create_app as create_ingest
from shared.bus.memory import MemoryBus
from shared.db.models import Agent
from shared.db.session import Database
from shared.events import MessageReceived, Topic, decode_event
from shared.problems import PROBLEM_CONTENT_TYPE
from shared.rate_limit import TokenBuckets
from shared.settings import Environment, Settings
from shared.webchat_origins import (
    InvalidOriginError,
    OriginPolicy,
    is_own_origin,
    normalize_origin,
    save_allowed_origins,
)
from tests.conftest import served

SHOP = "https://shop.acme.example"
EVIL = "https://evil.example"


# Policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("https://Shop.Acme.Example", "https://shop.acme.example"),
        ("https://shop.acme.example:443", "https://shop.acme.example"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:3000", "http://[::1]:3000"),
        ("https://*.acme.example", "https://*.acme.example"),
    ],
)
def test_origins_have_one_spelling(given: str, normalized: str) -> None:
    assert normalize_origin(given) == normalized


@pytest.mark.parametrize(
    "bad",
    [
        "shop.acme.example",
        "ftp://shop.acme.example",
        "https://shop.acme.example/",
        "https://shop.acme.example/chat",
        "https://shop.acme.example?x=1",
        "https://user@shop.acme.example",
        "https://shop.acme.example:99999",
        "https://shop_acme.example",
        "https://*",
        "*",
        "null",
        "",
    ],
)
def test_anything_but_scheme_host_port_is_refused(bad: str) -> None:
    with pytest.raises(InvalidOriginError):
        normalize_origin(bad)


def test_a_policy_admits_listed_origins_and_subdomains_of_wildcards() -> None:
    policy = OriginPolicy((SHOP, "https://*.partner.example"), any_when_unlisted=True)
    assert policy.allows(SHOP)
    assert policy.allows("https://eu.partner.example")
    assert not policy.allows("https://partner.example")  # the wildcard is subdomains only
    assert not policy.allows("https://evilpartner.example")
    assert not policy.allows("http://shop.acme.example")  # scheme matters
    assert not policy.allows("https://shop.acme.example:8443")  # so does the port
    assert not policy.allows("null")
    assert policy.frame_ancestors() == f"frame-ancestors 'self' {SHOP} https://*.partner.example"


def test_an_empty_list_means_any_site_only_where_configured_so() -> None:
    open_policy = OriginPolicy((), any_when_unlisted=True)
    closed = OriginPolicy((), any_when_unlisted=False)
    assert open_policy.allows(EVIL)
    assert open_policy.frame_ancestors() is None
    assert not closed.allows(SHOP)
    assert closed.frame_ancestors() == "frame-ancestors 'self'"


def test_own_origin_is_the_host_the_request_went_to() -> None:
    assert is_own_origin(
        "http://127.0.0.1:8001", host_header="127.0.0.1:8001", public_base_url=None
    )
    # Behind a TLS-terminating proxy: the browser says https, the Host has no port.
    assert is_own_origin(
        "https://chat.acme.example", host_header="chat.acme.example", public_base_url=None
    )
    assert not is_own_origin(
        "http://127.0.0.1:9999", host_header="127.0.0.1:8001", public_base_url=None
    )
    assert not is_own_origin(EVIL, host_header="127.0.0.1:8001", public_base_url=None)
    assert is_own_origin(
        "https://chat.acme.example",
        host_header="10.0.0.5:8001",
        public_base_url="https://chat.acme.example/",
    )


def test_settings_default_to_open_only_in_dev() -> None:
    assert Settings(environment=Environment.DEV).effective_webchat_any_origin_when_unlisted
    assert not Settings(environment=Environment.TEST).effective_webchat_any_origin_when_unlisted
    forced = Settings(environment=Environment.TEST, webchat_any_origin_when_unlisted=True)
    assert forced.effective_webchat_any_origin_when_unlisted
    assert Settings(rate_limit_per_minute=7).effective_webchat_messages_per_minute == 7
    assert Settings(webchat_messages_per_minute=5).effective_webchat_messages_per_minute == 5


def test_session_buckets_are_independent() -> None:
    now = [0.0]
    buckets = TokenBuckets(per_minute=2, clock=lambda: now[0])
    assert [buckets.take("a"), buckets.take("a")] == [0.0, 0.0]
    assert buckets.take("a") == pytest.approx(30.0)
    assert buckets.take("b") == 0.0
    now[0] = 30.0
    assert buckets.take("a") == 0.0


# Over HTTP ------------------------------------------------------------------------------


@pytest.fixture
def chat_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "smtp_listen_port": 0,
            "webchat_settings_cache_seconds": 0.0,
            "webchat_messages_per_minute": 3,
        }
    )


@dataclass
class Chat:
    client: httpx.AsyncClient
    url: str


@pytest.fixture
async def ingest(
    chat_settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[Chat]:
    async with (
        save(database, workspace_id, [SHOP]),
        served(create_ingest(chat_settings, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield Chat(client, url)


class save:
    """Save a workspace's allowed origins before the test (as an admin would)."""

    def __init__(self, database: Database, workspace_id: uuid.UUID, origins: list[str]) -> None:
        self.database, self.workspace_id, self.origins = database, workspace_id, origins

    async def __aenter__(self) -> None:
        async with self.database.sessions() as session:
            await save_allowed_origins(session, self.workspace_id, self.origins)
            await session.commit()

    async def __aexit__(self, *_: object) -> None:
        return None


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    assert response.json()["status"] == status


async def open_session(chat: Chat, **headers: str) -> tuple[str, dict[str, str]]:
    response = await chat.client.post("/v1/webchat/demo/sessions", json={}, headers=headers)
    assert response.status_code == 201, response.text
    body = response.json()
    return body["session_id"], {"authorization": f"Bearer {body['session_token']}"}


async def test_sessions_open_from_allowed_own_or_no_origin_and_not_from_others(
    ingest: Chat,
) -> None:
    await open_session(ingest, origin=SHOP)
    await open_session(ingest, origin=ingest.url)  # the widget's own chat page
    await open_session(ingest)  # not a browser's cross-site call

    refused = await ingest.client.post(
        "/v1/webchat/demo/sessions", json={}, headers={"origin": EVIL}
    )
    assert_problem(refused, 403)
    assert EVIL in refused.json()["detail"]


async def test_a_post_from_a_refused_origin_is_403_and_publishes_nothing(
    ingest: Chat, memory_bus: MemoryBus
) -> None:
    session_id, auth = await open_session(ingest)
    url = f"/v1/webchat/sessions/{session_id}/messages"

    refused = await ingest.client.post(url, json={"text": "hi"}, headers={**auth, "origin": EVIL})
    assert_problem(refused, 403)
    assert memory_bus.records(Topic.INBOUND.value) == []

    allowed = await ingest.client.post(url, json={"text": "hi"}, headers={**auth, "origin": SHOP})
    assert allowed.status_code == 202, allowed.text
    assert len(memory_bus.records(Topic.INBOUND.value)) == 1

    history = await ingest.client.get(url, headers={**auth, "origin": EVIL})
    assert_problem(history, 403)


async def test_the_customer_socket_closes_with_1008_for_a_refused_origin(ingest: Chat) -> None:
    session_id, auth = await open_session(ingest)
    token = auth["authorization"].removeprefix("Bearer ")
    ws_url = ingest.url.replace("http://", "ws://") + f"/v1/webchat/sessions/{session_id}/ws"

    async with connect(ws_url, origin=WsOrigin(EVIL)) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008

    for origin in (SHOP, ingest.url):
        async with connect(ws_url, origin=WsOrigin(origin)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            assert json.loads(await ws.recv())["type"] == "ready"


async def test_the_chat_page_may_be_framed_only_by_allowed_sites(ingest: Chat) -> None:
    page = await ingest.client.get("/widget/chat", params={"workspace": "demo"})
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert policy.endswith(f"; frame-ancestors 'self' {SHOP}")

    unknown = await ingest.client.get("/widget/chat", params={"workspace": "nobody"})
    assert_problem(unknown, 404)


async def test_an_empty_list_in_dev_mode_lets_any_site_in(
    chat_settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> None:
    del workspace_id
    dev = chat_settings.model_copy(update={"webchat_any_origin_when_unlisted": True})
    async with (
        served(create_ingest(dev, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        chat = Chat(client, url)
        await open_session(chat, origin=EVIL)
        page = await client.get("/widget/chat", params={"workspace": "demo"})
        assert "frame-ancestors" not in page.headers["content-security-policy"]
        demo = await client.get("/widget/demo")
        assert demo.status_code == 200


async def test_an_empty_list_elsewhere_admits_only_ingest_itself(
    chat_settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> None:
    del workspace_id
    async with (
        served(create_ingest(chat_settings, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        refused = await client.post("/v1/webchat/demo/sessions", json={}, headers={"origin": SHOP})
        assert_problem(refused, 403)
        await open_session(Chat(client, url), origin=url)


async def test_a_session_posting_too_fast_gets_429_and_nothing_is_published(
    ingest: Chat, memory_bus: MemoryBus
) -> None:
    session_id, auth = await open_session(ingest)
    url = f"/v1/webchat/sessions/{session_id}/messages"
    for n in range(3):
        accepted = await ingest.client.post(url, json={"text": f"m{n}"}, headers=auth)
        assert accepted.status_code == 202, accepted.text

    refused = await ingest.client.post(
        url, json={"text": "one too many", "client_message_id": "extra"}, headers=auth
    )
    assert_problem(refused, 429)
    assert int(refused.headers["retry-after"]) >= 1
    events = [decode_event(r).data for r in memory_bus.records(Topic.INBOUND.value)]
    assert [e.text for e in events if isinstance(e, MessageReceived)] == ["m0", "m1", "m2"]

    # The limit is the session's: another customer still writes.
    other_id, other_auth = await open_session(ingest)
    other = await ingest.client.post(
        f"/v1/webchat/sessions/{other_id}/messages", json={"text": "hello"}, headers=other_auth
    )
    assert other.status_code == 202, other.text


# Admin API ------------------------------------------------------------------------------


@pytest.fixture
async def agent_api(
    chat_settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[httpx.AsyncClient]:
    del workspace_id
    async with (
        served(create_agent_api(chat_settings, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield client


async def auth_as(
    database: Database, settings: Settings, workspace_id: uuid.UUID, role: str
) -> dict[str, str]:
    """A token of one of the workspace's agents, promoted to ``role``."""
    async with database.sessions() as session:
        agent = await session.scalar(
            select(Agent).where(Agent.workspace_id == workspace_id).order_by(Agent.email).limit(1)
        )
        assert agent is not None
        agent.role = role
        await session.commit()
        token, _ = issue_agent_token(AgentClaims(agent.id, workspace_id, role), settings)
    return {"authorization": f"Bearer {token}"}


SETTINGS_URL = "/v1/channels/webchat/settings"


async def test_admins_save_normalized_origins_and_ingest_enforces_them(
    agent_api: httpx.AsyncClient,
    chat_settings: Settings,
    memory_bus: MemoryBus,
    database: Database,
    workspace_id: uuid.UUID,
) -> None:
    admin = await auth_as(database, chat_settings, workspace_id, "admin")
    before = await agent_api.get(SETTINGS_URL, headers=admin)
    assert before.status_code == 200
    assert before.json() == {
        "allowed_origins": [],
        "any_origin_when_unlisted": False,
        "updated_at": None,
    }

    saved = await agent_api.put(
        SETTINGS_URL,
        json={"allowed_origins": ["https://Shop.Acme.Example:443", SHOP, "https://*.acme.example"]},
        headers=admin,
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["allowed_origins"] == [SHOP, "https://*.acme.example"]
    again = await agent_api.get(SETTINGS_URL, headers=admin)
    assert again.json()["allowed_origins"] == [SHOP, "https://*.acme.example"]

    async with (
        served(create_ingest(chat_settings, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        chat = Chat(client, url)
        await open_session(chat, origin="https://eu.acme.example")
        refused = await client.post("/v1/webchat/demo/sessions", json={}, headers={"origin": EVIL})
        assert_problem(refused, 403)


@pytest.mark.parametrize(
    "body",
    [
        {"allowed_origins": ["shop.acme.example"]},
        {"allowed_origins": ["https://shop.acme.example/path"]},
        {"allowed_origins": ["javascript://x"]},
        {"allowed_origins": "https://shop.acme.example"},
        {"allowed_origins": [SHOP], "extra": True},
        {"allowed_origins": [f"https://s{n}.acme.example" for n in range(101)]},
        {},
    ],
)
async def test_bad_settings_are_422_and_change_nothing(
    agent_api: httpx.AsyncClient,
    chat_settings: Settings,
    database: Database,
    workspace_id: uuid.UUID,
    body: object,
) -> None:
    admin = await auth_as(database, chat_settings, workspace_id, "admin")
    first = await agent_api.put(SETTINGS_URL, json={"allowed_origins": [SHOP]}, headers=admin)
    assert first.status_code == 200

    refused = await agent_api.put(SETTINGS_URL, json=body, headers=admin)
    assert_problem(refused, 422)
    kept = await agent_api.get(SETTINGS_URL, headers=admin)
    assert kept.json()["allowed_origins"] == [SHOP]


async def test_only_admins_change_settings_and_only_their_own_workspaces(
    agent_api: httpx.AsyncClient,
    chat_settings: Settings,
    memory_bus: MemoryBus,
    database: Database,
    workspace_id: uuid.UUID,
) -> None:
    supervisor = await auth_as(database, chat_settings, workspace_id, "supervisor")
    denied = await agent_api.put(SETTINGS_URL, json={"allowed_origins": [EVIL]}, headers=supervisor)
    assert_problem(denied, 403)
    assert (await agent_api.get(SETTINGS_URL, headers=supervisor)).json()["allowed_origins"] == []

    other_id = await seed_demo(database, slug="other")
    other_admin = await auth_as(database, chat_settings, other_id, "admin")
    saved = await agent_api.put(SETTINGS_URL, json={"allowed_origins": [EVIL]}, headers=other_admin)
    assert saved.status_code == 200

    # The other workspace's list is its own: the demo workspace's is unchanged and
    # ingest still refuses that site for the demo workspace's chat.
    assert (await agent_api.get(SETTINGS_URL, headers=supervisor)).json()["allowed_origins"] == []
    async with (
        served(create_ingest(chat_settings, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        demo = await client.post("/v1/webchat/demo/sessions", json={}, headers={"origin": EVIL})
        assert_problem(demo, 403)
        other = await client.post("/v1/webchat/other/sessions", json={}, headers={"origin": EVIL})
        assert other.status_code == 201, other.text
