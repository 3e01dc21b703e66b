"""Outgoing webhooks: signing and retry policy (pure), the REST API's refusals and
tenant isolation, and deliveries to a real receiver on loopback, on SQLite and the
in-process bus."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from services.agent_api.webhooks.service import check_target
from services.ingest.app import create_app as create_ingest
from services.ingest.webhooks import WebhookFanOut
from shared.bus.port import BusRecord
from shared.db.migrate import upgrade
from shared.db.models import WebhookDelivery, WebhookSubscription, utcnow
from shared.db.session import Database
from shared.events import (
    ConversationQueued,
    Event,
    MessageReceived,
    Topic,
    conversation_key,
    encode_event,
)
from shared.problems import ProblemError
from shared.settings import Environment, Settings
from shared.webhooks import (
    HEADER_ATTEMPT,
    HEADER_EVENT,
    HEADER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    DeliveryState,
    after_attempt,
    retry_delay,
    signature,
    target_refusal,
    verify_signature,
    webhook_event_types,
)
from tests.conftest import served
from tests.integration.test_api_agents import Desk, assert_problem, open_desk

QUEUED = "omniroute.conversation.queued.v1"
ASSIGNED = "omniroute.conversation.assigned.v1"

# --- signing (pure) -------------------------------------------------------------------


def receiver_recipe(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """The verification recipe of docs/integrations.md, written without our code."""
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return any(hmac.compare_digest(value, "v1=" + expected.hexdigest()) for value in header.split())


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"type":"omniroute.conversation.queued.v1"}'
    header = signature("whsec_test", 1_700_000_000, body)
    assert header.startswith("v1=")
    assert len(header) == len("v1=") + 64
    assert receiver_recipe("whsec_test", "1700000000", body, header)
    assert not receiver_recipe("whsec_other", "1700000000", body, header)
    assert not receiver_recipe("whsec_test", "1700000001", body, header)
    assert not receiver_recipe("whsec_test", "1700000000", body + b" ", header)


def test_verify_signature_refuses_tampering_staleness_and_missing_headers() -> None:
    body = b'{"id":"1"}'
    now = 1_700_000_000
    headers = {HEADER_TIMESTAMP: str(now), HEADER_SIGNATURE: signature("s3cret", now, body)}
    assert verify_signature("s3cret", headers, body, now=now + 10)
    lowered = {name.lower(): value for name, value in headers.items()}
    assert verify_signature("s3cret", lowered, body, now=now)
    assert not verify_signature("s3cret", headers, body + b"x", now=now)
    assert not verify_signature("wrong", headers, body, now=now)
    assert not verify_signature("s3cret", headers, body, now=now + 301)
    assert not verify_signature("s3cret", headers, body, now=now - 301)
    assert not verify_signature("s3cret", {HEADER_TIMESTAMP: str(now)}, body, now=now)
    assert not verify_signature("s3cret", {HEADER_SIGNATURE: "v1=00"}, body, now=now)
    rotated = {**headers, HEADER_SIGNATURE: f"v1=deadbeef {headers[HEADER_SIGNATURE]}"}
    assert verify_signature("s3cret", rotated, body, now=now)


# --- retry policy (pure) --------------------------------------------------------------


def test_retry_delay_doubles_with_jitter_within_bounds_and_is_capped() -> None:
    low = [retry_delay(n, base_seconds=10, max_seconds=1000, jitter=0.0) for n in range(1, 9)]
    high = [retry_delay(n, base_seconds=10, max_seconds=1000, jitter=1.0) for n in range(1, 9)]
    assert high[:7] == [10, 20, 40, 80, 160, 320, 640]
    assert high[7] == 1000  # capped
    assert low[:3] == [5, 10, 20]  # half of the delay is fixed
    mid = retry_delay(3, base_seconds=10, max_seconds=1000, jitter=0.5)
    assert low[2] < mid < high[2]
    assert retry_delay(500, base_seconds=10, max_seconds=60, jitter=1.0) == 60
    for bad in ({"jitter": 1.5}, {"jitter": -0.1}):
        with pytest.raises(ValueError, match="jitter"):
            retry_delay(1, base_seconds=1, max_seconds=10, **bad)
    with pytest.raises(ValueError, match="1-based"):
        retry_delay(0, base_seconds=1, max_seconds=10, jitter=0)


def test_after_attempt_delivers_retries_then_gives_up() -> None:
    assert after_attempt(accepted=True, attempt=5, give_up_after=5) is DeliveryState.DELIVERED
    assert after_attempt(accepted=False, attempt=1, give_up_after=3) is DeliveryState.PENDING
    assert after_attempt(accepted=False, attempt=3, give_up_after=3) is DeliveryState.FAILED


def test_targets_public_https_only_in_production() -> None:
    dev, prod = Environment.DEV, Environment.PROD
    assert target_refusal("http://127.0.0.1:9000/hook", environment=dev) is None
    assert target_refusal("https://crm.example.com/hook", environment=prod) is None
    assert (
        target_refusal("https://crm.example.com/h", environment=prod, addresses=["93.184.215.14"])
        is None
    )
    refused = [
        ("ftp://crm.example.com/hook", dev),
        ("/relative", dev),
        ("https://user:pw@crm.example.com/hook", dev),
        ("http://crm.example.com/hook", prod),
        ("https://localhost/hook", prod),
        ("https://127.0.0.1/hook", prod),
        ("https://10.1.2.3/hook", prod),
        ("https://192.168.0.10/hook", prod),
        ("https://169.254.169.254/latest", prod),
        ("https://[::1]/hook", prod),
        ("https://[::ffff:10.0.0.1]/hook", prod),
        ("https://crm.example.com:99999/hook", dev),
    ]
    for url, environment in refused:
        assert target_refusal(url, environment=environment) is not None, url
    resolves_private = target_refusal(
        "https://crm.example.com/hook", environment=prod, addresses=["10.0.0.7"]
    )
    assert resolves_private is not None
    assert "10.0.0.7" in resolves_private


# --- a real receiver on loopback --------------------------------------------------------


@dataclass
class Receiver:
    """Answers each POST with the next status of ``script`` (then 200), records all."""

    script: list[int]
    requests: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)

    async def endpoint(self, request: Request) -> PlainTextResponse:
        body = await request.body()
        status = self.script.pop(0) if self.script else 200
        self.requests.append((dict(request.headers), body, status))
        return PlainTextResponse("ok" if status < 300 else "try later", status_code=status)

    def app(self) -> FastAPI:
        app = FastAPI()
        app.router.add_route("/hook", self.endpoint, methods=["POST"])
        return app


@contextlib.asynccontextmanager
async def webhook_stack(tmp_path: Path, **overrides: Any) -> AsyncIterator[Desk]:
    """The agent API (two workspaces) and ingest (the webhook sender) on one database."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'webhooks.db'}"
    await asyncio.to_thread(upgrade, url)
    database = Database(url)
    try:
        async with open_desk(database) as desk:
            ingest_settings = Settings(
                environment=Environment.TEST,
                database_url=url,
                log_json=False,
                attachment_store_dir=tmp_path / "attachments",
                webhook_retry_base_seconds=0.02,
                webhook_retry_max_seconds=0.1,
                webhook_poll_interval_seconds=0.02,
                **overrides,
            )
            async with served(create_ingest(ingest_settings, bus=desk.bus, database=database)):
                yield desk
    finally:
        await database.dispose()


async def publish_queued(desk: Desk, workspace_id: uuid.UUID) -> Event:
    conversation_id = uuid.uuid4()
    event = Event.of(
        ConversationQueued(
            workspace_id=workspace_id,
            conversation_id=conversation_id,
            channel="webchat",
            priority=0,
            queued_at=utcnow(),
        ),
        source="omniroute/test",
        subject=str(conversation_id),
    )
    await desk.bus.publish(
        encode_event(
            event, topic=Topic.EVENTS.value, key=conversation_key(workspace_id, conversation_id)
        )
    )
    return event


async def eventually(check: Callable[[], Any], *, what: str, seconds: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy (a guard, not a timing claim)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        outcome = await check()
        if outcome:
            return outcome
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


async def subscribe(desk: Desk, url: str, types: list[str]) -> dict[str, Any]:
    created = await desk.call(
        "admin", "POST", "/v1/webhooks", json={"url": url, "event_types": types}
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def test_receiver_failing_twice_gets_one_accepted_signed_delivery(tmp_path: Path) -> None:
    receiver = Receiver(script=[500, 503])
    async with served(receiver.app()) as receiver_url, webhook_stack(tmp_path) as desk:
        hook = await subscribe(desk, f"{receiver_url}/hook", [QUEUED])
        assert hook["secret"].startswith("whsec_")
        event = await publish_queued(desk, desk.a.workspace_id)
        base = f"/v1/webhooks/{hook['id']}/deliveries"

        async def delivered() -> list[dict[str, Any]]:
            page = await desk.call("admin", "GET", base, params={"status": "delivered"})
            items: list[dict[str, Any]] = page.json()["items"]
            return items

        [delivery] = await eventually(delivered, what="the delivery to be accepted")
        detail = (await desk.call("admin", "GET", f"{base}/{delivery['id']}")).json()

    assert [status for _, _, status in receiver.requests] == [500, 503, 200]
    accepted = [(h, b) for h, b, status in receiver.requests if status == 200]
    assert len(accepted) == 1
    headers, body = accepted[0]
    assert verify_signature(hook["secret"], headers, body, now=time.time())
    assert receiver_recipe(
        hook["secret"], headers[HEADER_TIMESTAMP.lower()], body, headers[HEADER_SIGNATURE.lower()]
    )
    assert {h[HEADER_ID.lower()] for h, _, _ in receiver.requests} == {delivery["id"]}
    assert [h[HEADER_ATTEMPT.lower()] for h, _, _ in receiver.requests] == ["1", "2", "3"]
    assert headers[HEADER_EVENT.lower()] == QUEUED
    payload = json.loads(body)
    assert (payload["id"], payload["type"], payload["specversion"]) == (event.id, QUEUED, "1.0")
    assert payload["data"]["workspace_id"] == str(desk.a.workspace_id)

    assert (detail["status"], detail["attempts"], detail["event_id"]) == ("delivered", 3, event.id)
    log = detail["attempt_log"]
    assert [a["number"] for a in log] == [1, 2, 3]
    assert [a["status_code"] for a in log] == [500, 503, 200]
    assert [a["error"] is None for a in log] == [False, False, True]
    assert "500" in log[0]["error"]
    assert all(a["duration_ms"] >= 0 for a in log)
    assert log[0]["attempted_at"] <= log[1]["attempted_at"] <= log[2]["attempted_at"]
    assert detail["payload"]["id"] == event.id


async def test_given_up_delivery_is_failed_and_replays_to_success(tmp_path: Path) -> None:
    receiver = Receiver(script=[500, 500])
    async with (
        served(receiver.app()) as receiver_url,
        webhook_stack(tmp_path, webhook_max_attempts=2) as desk,
    ):
        hook = await subscribe(desk, f"{receiver_url}/hook", [QUEUED])
        await publish_queued(desk, desk.a.workspace_id)
        base = f"/v1/webhooks/{hook['id']}/deliveries"

        async def with_status(status: str) -> list[dict[str, Any]]:
            page = await desk.call("admin", "GET", base, params={"status": status})
            items: list[dict[str, Any]] = page.json()["items"]
            return items

        [failed] = await eventually(lambda: with_status("failed"), what="the delivery to fail")
        assert (failed["attempts"], failed["last_status_code"]) == (2, 500)
        path = f"{base}/{failed['id']}"
        other = await desk.client.post(f"{path}/replay", headers=desk.b.headers["admin"])
        assert_problem(other, 404)
        replayed = await desk.call("admin", "POST", f"{path}/replay")
        assert replayed.status_code == 202, replayed.text
        assert replayed.json()["status"] == "pending"
        await eventually(lambda: with_status("delivered"), what="the replay to be accepted")
        assert_problem(await desk.call("admin", "POST", f"{path}/replay"), 409)
        detail = (await desk.call("admin", "GET", path)).json()
    assert [a["status_code"] for a in detail["attempt_log"]] == [500, 500, 200]
    assert len(receiver.requests) == 3


async def test_only_subscribed_types_of_the_own_workspace_are_delivered(
    tmp_path: Path,
) -> None:
    receiver = Receiver(script=[])
    async with served(receiver.app()) as receiver_url, webhook_stack(tmp_path) as desk:
        hook = await subscribe(desk, f"{receiver_url}/hook", [QUEUED])
        disabled = await subscribe(desk, f"{receiver_url}/hook", [QUEUED])
        off = await desk.call(
            "admin", "PATCH", f"/v1/webhooks/{disabled['id']}", json={"enabled": False}
        )
        assert off.status_code == 200
        await publish_queued(desk, desk.b.workspace_id)  # another workspace's event
        wanted = await publish_queued(desk, desk.a.workspace_id)

        async def one_request() -> bool:
            return len(receiver.requests) >= 1

        await eventually(one_request, what="a delivery")
        page = await desk.call("admin", "GET", f"/v1/webhooks/{hook['id']}/deliveries")
        off_page = await desk.call("admin", "GET", f"/v1/webhooks/{disabled['id']}/deliveries")
    assert [d["event_id"] for d in page.json()["items"]] == [wanted.id]
    assert off_page.json()["items"] == []
    assert len(receiver.requests) == 1


async def test_fan_out_is_idempotent_and_ignores_other_types(
    database: Database, workspace_id: uuid.UUID
) -> None:
    async with database.sessions() as session:
        session.add(
            WebhookSubscription(
                workspace_id=workspace_id,
                url="http://127.0.0.1:9/hook",
                event_types=[QUEUED],
                secret="whsec_x",
            )
        )
        await session.commit()
    event = Event.of(
        ConversationQueued(
            workspace_id=workspace_id,
            conversation_id=uuid.uuid4(),
            channel="sms",
            priority=1,
            queued_at=utcnow(),
        ),
        source="omniroute/test",
    )
    inbound = Event.of(
        MessageReceived.model_validate(
            {
                "workspace_id": str(workspace_id),
                "channel": "sms",
                "provider_message_id": "SM1",
                "thread_key": "+15550001",
                "sender": {"address": "+15550001"},
                "text": "hi",
                "received_at": utcnow().isoformat(),
            }
        ),
        source="omniroute/test",
    )

    def record(e: Event, offset: int) -> BusRecord:
        out = encode_event(e, topic=Topic.EVENTS.value, key="k")
        return BusRecord(
            topic=out.topic,
            partition=0,
            offset=offset,
            key=out.key,
            value=out.value,
            headers=out.headers,
        )

    fan_out = WebhookFanOut(database, max_attempts=3)
    batch = [record(event, 0), record(inbound, 1)]
    await fan_out.handle(batch)
    await fan_out.handle(batch)  # redelivered after a crash
    async with database.sessions() as session:
        rows = list(await session.scalars(select(WebhookDelivery)))
    assert [(r.event_id, r.status, r.give_up_after) for r in rows] == [(event.id, "pending", 3)]
    assert MessageReceived.event_type not in webhook_event_types()


# --- REST API refusals and isolation ----------------------------------------------------


@pytest.fixture
async def desk(database: Database) -> AsyncIterator[Desk]:
    async with open_desk(database) as opened:
        yield opened


async def test_only_admins_manage_webhooks(desk: Desk) -> None:
    body = {"url": "https://crm.example.com/hook", "event_types": [QUEUED]}
    for who in ("agent", "supervisor", "supervisor_key"):
        assert_problem(await desk.call(who, "POST", "/v1/webhooks", json=body), 403)
        assert_problem(await desk.call(who, "GET", "/v1/webhooks"), 403)
    assert_problem(await desk.client.get("/v1/webhooks"), 401)
    created = await desk.call("admin_key", "POST", "/v1/webhooks", json=body)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/v1/webhooks/{created.json()['id']}"
    listed = (await desk.call("admin", "GET", "/v1/webhooks")).json()["items"]
    assert [w["id"] for w in listed] == [created.json()["id"]]
    assert "secret" not in listed[0]
    types = (await desk.call("admin", "GET", "/v1/webhooks/event-types")).json()["items"]
    assert QUEUED in types
    assert "omniroute.message.received.v1" not in types


async def test_bad_webhook_input_is_refused_and_nothing_stored(desk: Desk) -> None:
    good = {"url": "https://crm.example.com/hook", "event_types": [QUEUED]}
    bad_bodies: list[dict[str, Any]] = [
        {"url": "ftp://crm.example.com/hook"},
        {"url": "not a url"},
        {"url": "https://user:pw@crm.example.com/hook"},
        {"event_types": []},
        {"event_types": ["omniroute.nope.v1"]},
        {"event_types": ["omniroute.message.received.v1"]},
        {"enabled": "maybe"},
        {"secret": "mine"},
    ]
    for bad in bad_bodies:
        response = await desk.call("admin", "POST", "/v1/webhooks", json=good | bad)
        assert_problem(response, 422)
    unknown = await desk.call("admin", "POST", "/v1/webhooks", json=good | {"event_types": ["x"]})
    assert "omniroute.conversation.queued.v1" in unknown.json()["detail"]
    broken = await desk.client.post(
        "/v1/webhooks",
        content=b"{not json",
        headers={**desk.a.headers["admin"], "content-type": "application/json"},
    )
    assert_problem(broken, 400)
    assert (await desk.call("admin", "GET", "/v1/webhooks")).json()["items"] == []
    hook = (await desk.call("admin", "POST", "/v1/webhooks", json=good)).json()
    path = f"/v1/webhooks/{hook['id']}"
    assert_problem(await desk.call("admin", "PATCH", path, json={"url": "gopher://x"}), 422)
    assert_problem(await desk.call("admin", "PATCH", path, json={"event_types": ["x"]}), 422)
    assert (await desk.call("admin", "GET", path)).json()["url"] == good["url"]
    assert_problem(
        await desk.call("admin", "GET", f"{path}/deliveries", params={"status": "x"}), 422
    )


async def test_production_refuses_loopback_and_plain_http(database: Database) -> None:
    prod = Settings.model_construct(environment=Environment.PROD)
    for url in ("https://127.0.0.1/hook", "http://crm.example.com/hook", "https://localhost/x"):
        with pytest.raises(ProblemError) as refused:
            await check_target(prod, url)
        assert refused.value.status == 422


async def test_another_workspaces_webhooks_answer_404(desk: Desk) -> None:
    body = {"url": "https://crm.example.com/hook", "event_types": [QUEUED, ASSIGNED]}
    hook = (await desk.call("admin", "POST", "/v1/webhooks", json=body)).json()
    path = f"/v1/webhooks/{hook['id']}"
    theirs = desk.b.headers["admin"]
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", path, None),
        ("PATCH", path, {"enabled": False}),
        ("DELETE", path, None),
        ("GET", f"{path}/deliveries", None),
        ("GET", f"{path}/deliveries/{uuid.uuid4()}", None),
        ("POST", f"{path}/deliveries/{uuid.uuid4()}/replay", None),
    ]
    for method, url, json_body in calls:
        response = await desk.client.request(method, url, headers=theirs, json=json_body)
        assert_problem(response, 404)
    assert (await desk.client.get("/v1/webhooks", headers=theirs)).json()["items"] == []
    mine = await desk.call("admin", "GET", path)
    assert mine.json()["enabled"] is True
    assert mine.json()["event_types"] == sorted([QUEUED, ASSIGNED])
    assert (await desk.call("admin", "DELETE", path)).status_code == 204
    assert_problem(await desk.call("admin", "GET", path), 404)
    async with desk.database.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
