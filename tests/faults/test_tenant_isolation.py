"""F9 — tenant isolation: every agent_api endpoint, called by another workspace's admin
with this workspace's ids, answers 404 (no existence leak) and changes nothing.

The endpoints are enumerated from the app's own OpenAPI document, so an endpoint added
later is covered without editing this file: its path parameters must be ones we know
how to fill (else the test fails and says which), and its request body is the schema's
first example or a minimal body built from the schema's required fields.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from websockets.asyncio.client import connect

from devmode.seed import DEMO_AGENTS, DEMO_PASSWORD, seed_demo
from services.agent_api.app import create_app
from services.ingest.webhooks import WebhookFanOut
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.db.models import (
    Agent,
    Assignment,
    Contact,
    Conversation,
    Message,
    OutboxEvent,
    WebhookDelivery,
)
from shared.db.session import Database
from shared.events import CsatRecorded, OutboundMessageRequested, Topic, decode_event
from shared.problems import PROBLEM_CONTENT_TYPE
from shared.settings import Settings
from tests.conftest import served
from tests.unit.test_router import as_record, inbound

ADA, SAM = DEMO_AGENTS[0].email, DEMO_AGENTS[3].email
PATH_PARAMETER = re.compile(r"\{([^}]+)\}")
SURVEY_LINK = re.compile(r"/v1/surveys/([\w-]+\.[\w-]+)")
# Endpoints that name no resource of a workspace: nothing to isolate. The survey pages
# are public by design: the customer's link carries a signed token, no workspace auth;
# a forged or altered token answers 404 (tests/integration/test_api_csat.py::
# test_a_survey_link_records_one_score_and_a_low_one_opens_a_follow_up).
PUBLIC = {
    ("post", "/v1/auth/token"),
    ("get", "/v1/surveys/{token}"),
    ("post", "/v1/surveys/{token}"),
}


@pytest.fixture
async def api_url(
    settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[str]:
    async with served(create_app(settings, bus=memory_bus, database=database)) as url:
        yield url


async def sign_in(api: httpx.AsyncClient, email: str, workspace: str) -> dict[str, str]:
    response = await api.post(
        "/v1/auth/token", json={"workspace": workspace, "email": email, "password": DEMO_PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"authorization": f"Bearer {response.json()['access_token']}"}


async def make_admin(database: Database, workspace_id: uuid.UUID, email: str) -> None:
    async with database.sessions() as session:
        await session.execute(
            update(Agent)
            .where(Agent.workspace_id == workspace_id, Agent.email == email)
            .values(role="admin")
        )
        await session.commit()


def example_value(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    """A small valid value for ``schema`` (enough for FastAPI's validation to pass)."""
    if "$ref" in schema:
        return example_body(components[schema["$ref"].rsplit("/", 1)[-1]], components)
    if "examples" in schema:
        return schema["examples"][0]
    if "enum" in schema:
        return schema["enum"][0]
    for option in schema.get("anyOf", []):
        if option.get("type") != "null":
            return example_value(option, components)
    kind = schema.get("type")
    if kind == "string":
        formats = {
            "uuid": str(uuid.uuid4()),
            "date-time": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            "email": "someone@example.com",
        }
        return formats.get(schema.get("format", ""), "x" * max(1, schema.get("minLength", 1)))
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return example_body(schema, components)
    return None


def example_body(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    if "examples" in schema:
        return schema["examples"][0]
    properties = schema.get("properties", {})
    return {
        name: example_value(properties[name], components) for name in schema.get("required", [])
    }


def request_body(operation: dict[str, Any], components: dict[str, Any]) -> Any:
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return None
    return example_value(content["application/json"]["schema"], components)


@pytest.fixture
async def demo_ids(
    api_url: str, database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> dict[str, str]:
    """One resource of every kind in the demo workspace, by path-parameter name."""
    await InboundRouter(database, memory_bus).handle(
        [as_record(inbound(workspace_id, "wcs_victim", "victim-1", text="secret order 42"))]
    )
    await make_admin(database, workspace_id, SAM)
    async with database.sessions() as session:
        conversation = await session.scalar(
            select(Conversation).where(Conversation.workspace_id == workspace_id)
        )
        ada = await session.scalar(
            select(Agent).where(Agent.workspace_id == workspace_id, Agent.email == ADA)
        )
        contact = await session.scalar(select(Contact).where(Contact.workspace_id == workspace_id))
    assert conversation is not None
    assert ada is not None
    assert contact is not None
    async with httpx.AsyncClient(base_url=api_url) as api:
        admin = await sign_in(api, SAM, "demo")
        created = {
            "canned_response_id": await api.post(
                "/v1/canned-responses",
                json={"title": "Hello", "body": "Hello there", "shortcut": "hello"},
                headers=admin,
            ),
            "api_key_id": await api.post(
                "/v1/api-keys", json={"name": "crm", "role": "supervisor"}, headers=admin
            ),
            "team_id": await api.post("/v1/teams", json={"name": "returns"}, headers=admin),
            "webhook_id": await api.post(
                "/v1/webhooks",
                json={"url": "http://127.0.0.1:9/hook", "event_types": [CsatRecorded.event_type]},
                headers=admin,
            ),
            "channel_account_id": await api.post(
                "/v1/channel-accounts",
                json={"channel": "sms", "adapter": "twilio", "address": "+14155550100"},
                headers=admin,
            ),
            "notice_id": await api.post(
                "/v1/notices",
                json={"text": "Your order has shipped.", "contact_ids": [str(contact.id)]},
                headers=admin,
            ),
        }
        follow_up_id = await low_score_follow_up(api, memory_bus, admin, conversation.id)
    ids = {"conversation_id": str(conversation.id), "agent_id": str(ada.id)}
    ids["contact_id"] = str(contact.id)
    for name, response in created.items():
        accepted = 202 if name == "notice_id" else 201  # a notice is sent asynchronously
        assert response.status_code == accepted, (name, response.text)
        ids[name] = str(response.json()["id"])
    ids["follow_up_id"] = follow_up_id
    # The webhook sender's fan-out turns the survey's csat.recorded event into a delivery.
    await WebhookFanOut(database, max_attempts=3).handle(memory_bus.records(Topic.EVENTS.value))
    async with database.sessions() as session:
        delivery = await session.scalar(
            select(WebhookDelivery.id).where(WebhookDelivery.workspace_id == workspace_id)
        )
    assert delivery is not None
    ids["delivery_id"] = str(delivery)
    return ids


async def low_score_follow_up(
    api: httpx.AsyncClient,
    memory_bus: MemoryBus,
    admin: dict[str, str],
    conversation_id: uuid.UUID,
) -> str:
    """Surveys on, resolve, a score of 1 through the link: the follow-up it opens."""
    enabled = await api.put(
        "/v1/csat/settings",
        json={"enabled": True, "link_base_url": "https://desk.example.com"},
        headers=admin,
    )
    assert enabled.status_code == 200, enabled.text
    resolved = await api.post(
        f"/v1/conversations/{conversation_id}/resolve", json={}, headers=admin
    )
    assert resolved.status_code == 200, resolved.text
    links = [
        match.group(1)
        for record in memory_bus.records(Topic.OUTBOUND.value)
        if isinstance(sent := decode_event(record).data, OutboundMessageRequested)
        and sent.conversation_id == conversation_id
        and (match := SURVEY_LINK.search(sent.text or ""))
    ]
    assert len(links) == 1, links
    answered = await api.post(f"/v1/surveys/{links[0]}", json={"score": 1})
    assert answered.status_code == 200, answered.text
    listed = await api.get("/v1/csat/follow-ups", headers=admin)
    assert listed.status_code == 200, listed.text
    [follow_up] = listed.json()["items"]
    return str(follow_up["id"])


async def snapshot(database: Database, workspace_id: uuid.UUID) -> dict[str, int]:
    """Row counts of the workspace's conversations, messages, assignments and events."""
    queries = {
        "messages": select(func.count(Message.id)).where(Message.workspace_id == workspace_id),
        "assignments": select(func.count(Assignment.id)).where(
            Assignment.workspace_id == workspace_id
        ),
        "events": select(func.count(OutboxEvent.id)).where(
            OutboxEvent.workspace_id == workspace_id
        ),
        "conversations": select(func.count(Conversation.id)).where(
            Conversation.workspace_id == workspace_id
        ),
    }
    async with database.sessions() as session:
        return {label: int(await session.scalar(query) or 0) for label, query in queries.items()}


async def test_every_endpoint_refuses_another_workspaces_ids_with_404(
    api_url: str,
    database: Database,
    memory_bus: MemoryBus,
    workspace_id: uuid.UUID,
    demo_ids: dict[str, str],
) -> None:
    other_id = await seed_demo(database, slug="other")
    await make_admin(database, other_id, SAM)
    before = await snapshot(database, workspace_id)
    outbound_before = len(memory_bus.records(Topic.OUTBOUND.value))
    async with httpx.AsyncClient(base_url=api_url) as api:
        outsider = await sign_in(api, SAM, "other")
        document = (await api.get("/openapi.json")).json()
        components = document.get("components", {}).get("schemas", {})
        answers: dict[str, tuple[int, str]] = {}
        unknown: list[str] = []
        listed: dict[str, str] = {}
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if (method, path) in PUBLIC:
                    continue
                names = PATH_PARAMETER.findall(path)
                if not names:
                    if method == "get":
                        listed[path] = (await api.get(path, headers=outsider)).text
                    continue
                if any(name not in demo_ids for name in names):
                    unknown.append(f"{method.upper()} {path}")
                    continue
                url = PATH_PARAMETER.sub(lambda m: demo_ids[m.group(1)], path)
                response = await api.request(
                    method,
                    url,
                    json=request_body(operation, components),
                    headers=outsider,
                )
                answers[f"{method.upper()} {path}"] = (
                    response.status_code,
                    response.headers.get("content-type", ""),
                )

    assert unknown == [], f"add the path parameters of these endpoints to demo_ids: {unknown}"
    assert answers, "the OpenAPI document lists endpoints with ids"
    assert {k: v for k, v in answers.items() if v != (404, PROBLEM_CONTENT_TYPE)} == {}
    leaked = {
        path: [name for name, value in demo_ids.items() if value in text]
        for path, text in listed.items()
    }
    assert {path: names for path, names in leaked.items() if names} == {}
    assert all("secret order 42" not in text for text in listed.values())
    assert await snapshot(database, workspace_id) == before
    assert len(memory_bus.records(Topic.OUTBOUND.value)) == outbound_before


async def test_a_websocket_of_another_workspace_neither_sees_nor_subscribes(
    api_url: str, database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    other_id = await seed_demo(database, slug="other")
    ws_url = api_url.replace("http://", "ws://") + "/v1/ws"
    async with httpx.AsyncClient(base_url=api_url) as api:
        outsider = await sign_in(api, SAM, "other")
    token = outsider["authorization"].removeprefix("Bearer ")
    async with connect(f"{ws_url}?last_seq=0") as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready"
        await InboundRouter(database, memory_bus).handle(
            [as_record(inbound(workspace_id, "wcs_victim", "victim-2", text="secret"))]
        )
        async with database.sessions() as session:
            conversation_id = await session.scalar(
                select(Conversation.id).where(Conversation.workspace_id == workspace_id)
            )
        await ws.send(json.dumps({"type": "subscribe", "conversation_id": str(conversation_id)}))
        answer = json.loads(await ws.recv())
        # A ping after the demo workspace's events: every frame before the pong is ours.
        await ws.send(json.dumps({"type": "ping"}))
        frames = []
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] in ("pong", "heartbeat"):
                break
            frames.append(frame)

    assert other_id != workspace_id
    assert answer == {"type": "error", "detail": f"no conversation {conversation_id}"}
    assert frames == []


async def test_ids_of_another_workspace_in_request_bodies_are_unknown(
    api_url: str,
    database: Database,
    memory_bus: MemoryBus,
    workspace_id: uuid.UUID,
    demo_ids: dict[str, str],
) -> None:
    """The outsider's own resources in the path, the demo workspace's ids in the body."""
    other_id = await seed_demo(database, slug="other")
    await make_admin(database, other_id, SAM)
    await InboundRouter(database, memory_bus).handle(
        [as_record(inbound(other_id, "wcs_outsider", "outsider-1"))]
    )
    async with database.sessions() as session:
        own_contact = await session.scalar(
            select(Contact.id).where(Contact.workspace_id == other_id)
        )
        own_conversation = await session.scalar(
            select(Conversation.id).where(Conversation.workspace_id == other_id)
        )
    before = await snapshot(database, workspace_id)
    async with httpx.AsyncClient(base_url=api_url) as api:
        outsider = await sign_in(api, SAM, "other")
        merge = await api.post(
            f"/v1/contacts/{own_contact}/merge",
            json={"other_contact_id": demo_ids["contact_id"]},
            headers=outsider,
        )
        transfer = await api.post(
            f"/v1/conversations/{own_conversation}/transfers",
            json={"reason": "to the other workspace", "agent_id": demo_ids["agent_id"]},
            headers=outsider,
        )
        consult = await api.post(
            f"/v1/conversations/{own_conversation}/consultations",
            json={"note": "help?", "agent_id": demo_ids["agent_id"]},
            headers=outsider,
        )

    assert (merge.status_code, merge.headers["content-type"]) == (404, PROBLEM_CONTENT_TYPE)
    for response in (transfer, consult):
        assert response.status_code in (404, 409, 422), response.text
        assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert await snapshot(database, workspace_id) == before
