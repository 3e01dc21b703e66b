"""Correlation ids across services, PII kept out of logs, readiness on shutdown."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from services.ingest.app import create_app
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.db.session import Database
from shared.events import Topic, decode_event
from shared.logging import redact_credentials, redact_pii
from shared.serve import YOUNG_COLLECTION_ALLOCATIONS, GracefulServer
from shared.settings import Settings
from tests.conftest import free_port, served


@pytest.fixture
async def ingest(
    settings: Settings, memory_bus: MemoryBus, database: Database, workspace_id: uuid.UUID
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        served(create_app(settings, bus=memory_bus, database=database)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield client


async def test_a_correlation_id_follows_the_message_into_every_event(
    ingest: httpx.AsyncClient, memory_bus: MemoryBus, database: Database
) -> None:
    opened = (await ingest.post("/v1/webchat/demo/sessions", json={})).json()
    response = await ingest.post(
        opened["messages_url"],
        json={"text": "hi"},
        headers={
            "authorization": f"Bearer {opened['session_token']}",
            "x-correlation-id": "req-42",
        },
    )
    await InboundRouter(database, memory_bus).handle(memory_bus.records(Topic.INBOUND.value))

    assert response.headers["x-correlation-id"] == "req-42"
    [inbound] = memory_bus.records(Topic.INBOUND.value)
    assert inbound.header("ce_correlationid") == b"req-42"
    downstream = [decode_event(r) for r in memory_bus.records(Topic.EVENTS.value)]
    assert downstream
    assert {e.correlationid for e in downstream} == {"req-42"}


async def test_a_correlation_id_is_minted_when_none_or_a_bad_one_is_sent(
    ingest: httpx.AsyncClient,
) -> None:
    minted = await ingest.get("/healthz")
    refused = await ingest.get("/healthz", headers={"x-correlation-id": "bad id\twith spaces"})

    assert len(minted.headers["x-correlation-id"]) == 32
    assert refused.headers["x-correlation-id"] != "bad id\twith spaces"


def test_addresses_and_dates_in_logs_are_not_taken_for_phone_numbers() -> None:
    line = redact_pii(
        None,
        "info",
        {
            "event": "Uvicorn running on http://127.0.0.1:8001, due 2026-11-23 at 10.0.0.12",
            "caller": "call 415.555.0100 or +44 20 7946 0958 or whatsapp:+14155550100",
            "shaped": "No.0791234567, 079.123.45.67, 612.34.56.78, 0701-23-45-67",
        },
    )

    assert line["event"] == "Uvicorn running on http://127.0.0.1:8001, due 2026-11-23 at 10.0.0.12"
    assert line["caller"] == "call [phone] or [phone] or whatsapp:[phone]"
    # Shaped like an address or a date, but not valid ones: still phone numbers.
    assert line["shaped"] == "No.[phone], [phone], [phone], [phone]"


def test_logs_keep_customer_data_out_by_default() -> None:
    line = redact_pii(
        None,
        "info",
        {
            "event": "reply to ann.lee@example.com or +1 (415) 555-0100, order 12345",
            "text": "my card number is ...",
            "count": 3,
        },
    )

    assert line["event"] == "reply to [email] or [phone], order 12345"
    assert line["text"] == "[redacted]"
    assert line["count"] == 3


def test_fields_named_like_a_credential_are_blanked_even_when_pii_is_logged() -> None:
    """``redact_credentials`` runs whatever ``OMNI_LOG_PII`` says (see the handshake
    test below); logging customer data for debugging never logs a password."""
    line = redact_credentials(
        None,
        "info",
        {
            "event": "sign-in refused",
            "password": "hunter2",
            "token": "abc",
            "authorization": "Bearer abc",
            "secret": "s",
            "api_key": "k",
            "email": "ann.lee@example.com",
        },
    )

    assert {k: v for k, v in line.items() if v == "[redacted]"}.keys() == {
        "password",
        "token",
        "authorization",
        "secret",
        "api_key",
    }
    assert line["email"] == "ann.lee@example.com"


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
# How uvicorn logs a WebSocket handshake (logger "uvicorn.error", INFO): path and query.
HANDSHAKE = '%s - "WebSocket %s" [accepted]'
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_credentials_in_a_url_are_redacted_and_other_parameters_kept() -> None:
    line = redact_credentials(
        None,
        "info",
        {
            "event": f'127.0.0.1:1 - "WebSocket /v1/ws?token={JWT}&last_seq=42" [accepted]',
            "url": f"/v1/me?access_token={JWT}&cursor=abc&limit=5",
            "webhook": "/webhooks/meta?hub.mode=subscribe&hub.verify_token=s3cret&hub.challenge=7",
            "signed": "/media/1?X-Amz-Signature=f00d&X-Amz-Credential=AKIA/x&api_key=k&key=k2",
            "bare": f"offered {JWT} in a path",
            "count": 3,
        },
    )

    assert line["event"] == (
        '127.0.0.1:1 - "WebSocket /v1/ws?token=[redacted]&last_seq=42" [accepted]'
    )
    assert line["url"] == "/v1/me?access_token=[redacted]&cursor=abc&limit=5"
    assert line["webhook"] == (
        "/webhooks/meta?hub.mode=subscribe&hub.verify_token=[redacted]&hub.challenge=7"
    )
    assert line["signed"] == (
        "/media/1?X-Amz-Signature=[redacted]&X-Amz-Credential=[redacted]"
        "&api_key=[redacted]&key=[redacted]"
    )
    assert line["bare"] == "offered [redacted] in a path"
    assert line["count"] == 3


@pytest.mark.parametrize("log_pii", [False, True])
def test_uvicorn_s_handshake_line_never_carries_a_token_from_the_query(log_pii: bool) -> None:
    """Through the logging every service configures (in a process of its own, as the
    configuration is global), whether or not customer data may be logged."""
    logged = _logged_by_a_configured_process(
        log_pii,
        f"logging.getLogger('uvicorn.error').info({HANDSHAKE!r}, '127.0.0.1:50123', "
        f"'/v1/ws?token={JWT}&last_seq=7')\n",
    )

    assert "/v1/ws?token=[redacted]&last_seq=7" in logged
    assert JWT.split(".")[1] not in logged


def test_credentials_in_quoted_json_and_url_forms_are_redacted() -> None:
    line = redact_credentials(
        None,
        "info",
        {
            "repr": "Client(token='abc', password=\"hunter 2\", timeout=5)",
            "json": '{"access_token": "abc.def", "expires_in": 3600, "token_type": "bearer"}',
            "dict": "{'client_secret': 's3cret', 'client_id': 'app-1'}",
            "header": "Authorization: Bearer abc123",
            "meta": "X-Hub-Signature-256: sha256=9f0a",
            "dsn": "postgresql+asyncpg://omni:pa55word@db.internal:5432/omni?ssl=require",
            "redis": "redis://:pa55word@10.0.0.12:6379/0",
        },
    )

    assert line["repr"] == "Client(token='[redacted]', password=\"[redacted]\", timeout=5)"
    assert line["json"] == (
        '{"access_token": "[redacted]", "expires_in": 3600, "token_type": "bearer"}'
    )
    assert line["dict"] == "{'client_secret': '[redacted]', 'client_id': 'app-1'}"
    assert line["header"] == "Authorization: [redacted]"
    assert line["meta"] == "X-Hub-Signature-256: [redacted]"
    assert line["dsn"] == "postgresql+asyncpg://omni:[redacted]@db.internal:5432/omni?ssl=require"
    assert line["redis"] == "redis://:[redacted]@10.0.0.12:6379/0"


def test_credentials_nested_in_dicts_and_lists_are_redacted_without_touching_the_caller_s() -> None:
    headers = {"authorization": "Bearer abc", "x-api-key": "k", "accept": "*/*"}
    payload = {
        "headers": headers,
        "urls": [f"/v1/ws?token={JWT}", ("/media?key=k2", 3)],
        "thread_key": "t-1",
    }
    line = redact_credentials(None, "info", {"event": "calling", "request": payload})

    assert line["request"] == {
        "headers": {"authorization": "[redacted]", "x-api-key": "[redacted]", "accept": "*/*"},
        "urls": ["/v1/ws?token=[redacted]", ("/media?key=[redacted]", 3)],
        "thread_key": "t-1",
    }
    assert headers["authorization"] == "Bearer abc"  # the caller's object, unchanged


def test_customer_data_nested_in_dicts_and_lists_is_masked() -> None:
    line = redact_pii(
        None,
        "info",
        {"event": "sent", "reply": {"to": ["ann.lee@example.com"], "text": "hi", "tries": 2}},
    )

    assert line["reply"] == {"to": ["[email]"], "text": "[redacted]", "tries": 2}


def test_operational_keys_and_values_are_not_taken_for_credentials() -> None:
    kept = {
        "query": "/v1/threads?thread_key=wa:+1415&replay_key=r-9&idempotency_key=i-1"
        "&storage_key=att/1&monkey=3&keyword=x",
        "kafka": "ConsumerRecord(topic='omni.inbound', partition=0, key=b'ws-1:sms', offset=7)",
        "logfmt": "published key=ws-1:sms dedupe_key=d-1 partition_key=p-2",
        "ops": "Uvicorn running on http://127.0.0.1:8001, due 2026-11-23T10:00:00Z",
        "mailbox": "from ann.lee@example.com via smtp://relay.example:25",
    }
    line = redact_credentials(
        None, "info", {**kept, "thread_key": "t-1", "replay_key": "r-1", "key": "ws-1"}
    )

    assert line == {**kept, "thread_key": "t-1", "replay_key": "r-1", "key": "ws-1"}


def _logged_by_a_configured_process(log_pii: bool, statements: str) -> str:
    """What ``statements`` log through the logging every service configures, in a
    process of its own (the configuration is global)."""
    script = (
        "import logging\n"
        "import structlog\n"
        "from shared.logging import configure_logging\n"
        f"configure_logging(service='probe', log_pii={log_pii})\n" + statements
    )
    finished = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return finished.stderr


FAILING_CALL = (
    "def call():\n"
    "    raise RuntimeError("
    f"'refused /v1/me?access_token={JWT}&limit=5 bearer {JWT} for ann.lee@example.com')\n"
)


@pytest.mark.parametrize("log_pii", [False, True])
@pytest.mark.parametrize(
    "logged",
    [
        "structlog.get_logger('probe').exception('call failed')",
        # how uvicorn reports an application's exception
        "logging.getLogger('uvicorn.error').error('Exception in ASGI application', exc_info=True)",
    ],
)
def test_exception_text_is_redacted_like_the_rest_of_the_line(log_pii: bool, logged: str) -> None:
    stderr = _logged_by_a_configured_process(
        log_pii, FAILING_CALL + f"try:\n    call()\nexcept RuntimeError:\n    {logged}\n"
    )

    assert "Traceback" in stderr
    assert "RuntimeError: refused /v1/me?access_token=[redacted]&limit=5" in stderr
    assert JWT.split(".")[1] not in stderr
    assert ("ann.lee@example.com" in stderr) is log_pii


async def test_readiness_fails_once_shutdown_begins(
    settings: Settings, memory_bus: MemoryBus, database: Database
) -> None:
    app = create_app(settings, bus=memory_bus, database=database)
    async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
        before = await client.get("/readyz")
        app.state.shutting_down = True  # what GracefulServer does on SIGTERM
        during = await client.get("/readyz")
        alive = await client.get("/healthz")

    assert before.status_code == 200
    assert before.json()["checks"] == {"bus": True, "database": True}
    assert during.status_code == 503
    assert during.json()["shutting_down"] is True
    assert alive.status_code == 200


async def test_a_started_server_keeps_what_starting_built_out_of_full_collections(
    settings: Settings, memory_bus: MemoryBus, database: Database
) -> None:
    app = create_app(settings, bus=memory_bus, database=database)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None)
    server = GracefulServer(config, app)
    thresholds = gc.get_threshold()
    gc.unfreeze()
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()  # startup failed: say why
            await asyncio.sleep(0.01)
        frozen, young_threshold = gc.get_freeze_count(), gc.get_threshold()[0]
        server.should_exit = True
        await asyncio.wait_for(serving, 15)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)

    # The app, its modules and clients: far more than a handful of objects.
    assert frozen > 10_000
    assert young_threshold == YOUNG_COLLECTION_ALLOCATIONS
