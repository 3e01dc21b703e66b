"""An integration's journey: subscribe a loopback receiver to `message.created`, a
customer writes in web chat, the receiver gets the signed event (after refusing the
first attempt), and the delivery log shows both attempts."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from services.agent_api.auth import new_api_key
from shared.db.models import ApiKey, Workspace
from shared.db.session import Database
from shared.webhooks import HEADER_ID, verify_signature
from tests.conftest import served

MESSAGE_CREATED = "omniroute.message.created.v1"


@dataclass
class FailFirstReceiver:
    """Refuses the first attempt of every delivery (503), accepts the rest."""

    seen: set[str] = field(default_factory=set)
    requests: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)

    async def endpoint(self, request: Request) -> PlainTextResponse:
        body = await request.body()
        delivery = request.headers.get(HEADER_ID, "")
        status = 200 if delivery in self.seen else 503
        self.seen.add(delivery)
        self.requests.append((dict(request.headers), body, status))
        return PlainTextResponse("", status_code=status)

    def app(self) -> FastAPI:
        app = FastAPI()
        app.router.add_route("/hook", self.endpoint, methods=["POST"])
        return app


@dataclass(frozen=True)
class WebhookRoundTrip:
    text: str
    secret: str
    accepted: list[tuple[dict[str, str], bytes]]
    refused: int
    delivery: dict[str, Any]


async def admin_api_key(database: Database, workspace: str) -> str:
    key, prefix, digest = new_api_key()
    async with database.sessions() as session:
        workspace_id = await session.scalar(select(Workspace.id).where(Workspace.slug == workspace))
        assert workspace_id is not None
        session.add(
            ApiKey(
                workspace_id=workspace_id,
                name="webhook e2e",
                key_prefix=prefix,
                key_hash=digest,
                role="admin",
            )
        )
        await session.commit()
    return key


async def webhook_round_trip(
    ingest_url: str, api_url: str, *, workspace: str, api_key: str, within_seconds: float = 60
) -> WebhookRoundTrip:
    receiver = FailFirstReceiver()
    auth = {"X-API-Key": api_key}
    async with (
        served(receiver.app()) as receiver_url,
        httpx.AsyncClient(base_url=api_url, timeout=30, headers=auth) as api,
        httpx.AsyncClient(base_url=ingest_url, timeout=30) as ingest,
    ):
        created = await api.post(
            "/v1/webhooks",
            json={"url": f"{receiver_url}/hook", "event_types": [MESSAGE_CREATED]},
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        opened = await ingest.post(f"/v1/webchat/{workspace}/sessions", json={"display_name": "Lu"})
        assert opened.status_code == 201, opened.text
        session = opened.json()
        text = f"Is my invoice ready? {uuid.uuid4().hex[:8]}"
        posted = await ingest.post(
            session["messages_url"],
            json={"text": text},
            headers={"authorization": f"Bearer {session['session_token']}"},
        )
        assert posted.status_code == 202, posted.text

        def ours() -> list[tuple[dict[str, str], bytes]]:
            return [
                (headers, body)
                for headers, body, status in receiver.requests
                if status == 200 and json.loads(body)["data"].get("text") == text
            ]

        deadline = time.monotonic() + within_seconds
        while not ours():
            if time.monotonic() > deadline:
                raise AssertionError(f"no accepted delivery; receiver saw {receiver.requests}")
            await asyncio.sleep(0.1)
        accepted = ours()
        delivery_id = accepted[0][0][HEADER_ID.lower()]
        # The receiver has answered; the sender records the outcome right after.
        while True:
            detail = await api.get(f"/v1/webhooks/{hook['id']}/deliveries/{delivery_id}")
            assert detail.status_code == 200, detail.text
            if detail.json()["status"] != "pending" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    refused = sum(
        1
        for headers, _, status in receiver.requests
        if status == 503 and headers.get(HEADER_ID.lower()) == delivery_id
    )
    return WebhookRoundTrip(
        text=text, secret=hook["secret"], accepted=accepted, refused=refused, delivery=detail.json()
    )


def assert_signed_round_trip(result: WebhookRoundTrip) -> None:
    assert len(result.accepted) == 1
    headers, body = result.accepted[0]
    assert verify_signature(result.secret, headers, body, now=time.time())
    assert json.loads(body)["type"] == MESSAGE_CREATED
    assert result.refused == 1
    assert result.delivery["status"] == "delivered"
    assert [a["status_code"] for a in result.delivery["attempt_log"]] == [503, 200]
