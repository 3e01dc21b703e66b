"""The signed-webhook adapter: omniroute's contract kit, its discovery, and its refusals."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import EntryPoint
from typing import Any

import pytest
from shared.channels import (
    ChannelAccount,
    ChannelContext,
    ChannelRegistry,
    ChannelRequestError,
    ChannelRuntime,
    InboundRequest,
    MemoryAttachmentStore,
    PermanentDeliveryError,
    ProviderUnavailableError,
)
from shared.channels.contract import ChannelAdapterContract, Recorder, with_body, with_header
from shared.events import Channel, OutboundMessageRequested

from omniroute_signed_webhook import SignedWebhookAdapter, signature, signed_headers

SECRET = "partner-shared-secret-0123456789"
WORKSPACE = uuid.UUID("00000000-0000-4000-8000-00000000e5a1")
ACCOUNT = uuid.UUID("00000000-0000-4000-8000-00000000e5a2")
URL = f"https://ingest.acme.example/v1/channels/signedwebhook/{ACCOUNT}"


@dataclass(frozen=True)
class PartnerCall:
    """A request the partner's stand-in received."""

    path: str
    headers: dict[str, str]
    body: bytes


@contextlib.contextmanager
def partner_stand_in(statuses: list[int] | None = None) -> Iterator[tuple[str, Recorder]]:
    """The partner's inbox: a real HTTP server on loopback that records what it gets."""
    recorder = Recorder()
    answers = list(statuses or [])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            status = answers.pop(0) if answers else 200
            if status == 200:
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorder.record(PartnerCall(self.path, headers, body))
            payload = json.dumps({"id": "partner-77"}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/inbox", recorder
    finally:
        server.shutdown()
        server.server_close()


def account(outbound_url: str = "https://partner.example/inbox") -> ChannelAccount:
    return ChannelAccount(
        id=ACCOUNT,
        workspace_id=WORKSPACE,
        channel=Channel.SOCIAL,
        adapter="signedwebhook",
        address="partner",
        secret=SECRET,
        settings={"outbound_url": outbound_url},
    )


def signed_request(payload: Any, *, timestamp: int | None = None) -> InboundRequest:
    body = json.dumps(payload).encode()
    headers = {k.lower(): v for k, v in signed_headers(SECRET, body, timestamp=timestamp).items()}
    return InboundRequest(body=body, url=URL, headers=headers)


def context(outbound_url: str = "https://partner.example/inbox") -> ChannelContext:
    return ChannelContext(account=account(outbound_url), attachments=MemoryAttachmentStore())


# The contract kit ----------------------------------------------------------------------


class TestSignedWebhookContract(ChannelAdapterContract):
    outbound_url = "https://partner.example/inbox"

    def make_adapter(self) -> SignedWebhookAdapter:
        return SignedWebhookAdapter(ChannelRuntime())

    def account(self) -> ChannelAccount:
        return account(self.outbound_url)

    def valid_request(self) -> InboundRequest:
        return signed_request(
            {
                "messages": [
                    {"id": "msg-1", "from": "user-42", "text": "Hello", "thread": "order-1234"},
                    {"id": "msg-2", "from": "user-43", "text": "Hi there"},
                ]
            }
        )

    def sign(self, request: InboundRequest) -> InboundRequest:
        stamp = request.headers["x-webhook-timestamp"]
        return with_header(request, "X-Webhook-Signature", signature(SECRET, stamp, request.body))

    def forged_requests(self, valid: InboundRequest) -> list[tuple[str, InboundRequest]]:
        stamp = valid.headers["x-webhook-timestamp"]
        return [
            ("no signature", with_header(valid, "X-Webhook-Signature", None)),
            ("no timestamp", with_header(valid, "X-Webhook-Timestamp", None)),
            ("wrong key", with_header(valid, "X-Webhook-Signature", signature("x", stamp, b"{}"))),
            ("tampered", with_body(valid, valid.body.replace(b"Hello", b"Refund"))),
            ("re-stamped", with_header(valid, "X-Webhook-Timestamp", str(int(stamp) + 1))),
            ("stale", signed_request(json.loads(valid.body), timestamp=int(stamp) - 3600)),
        ]

    def stand_in(self) -> AbstractAsyncContextManager[Recorder]:
        @contextlib.asynccontextmanager
        async def server() -> AsyncIterator[Recorder]:
            with partner_stand_in() as (url, recorder):
                self.outbound_url = url
                yield recorder

        return server()

    def check_delivery(self, message: OutboundMessageRequested, delivered: Any) -> None:
        assert isinstance(delivered, PartnerCall)
        assert delivered.path == "/inbox"
        stamp = delivered.headers["x-webhook-timestamp"]
        assert delivered.headers["x-webhook-signature"] == signature(SECRET, stamp, delivered.body)
        assert json.loads(delivered.body) == {
            "id": str(message.message_id),
            "to": message.recipient_address,
            "text": message.text,
            "conversation_id": str(message.conversation_id),
        }


# Beyond the contract --------------------------------------------------------------------


def test_the_entry_point_builds_it_in_omniroutes_registry() -> None:
    point = EntryPoint(
        name="signedwebhook",
        value="omniroute_signed_webhook.adapter:SignedWebhookAdapter",
        group="omniroute.channels",
    )
    registry = ChannelRegistry.discover(ChannelRuntime(), found=[point])
    assert isinstance(registry.get("signedwebhook"), SignedWebhookAdapter)
    assert registry.for_outbound(Channel.SOCIAL, "signedwebhook").name == "signedwebhook"


async def test_threads_and_dedupe_ids() -> None:
    adapter = SignedWebhookAdapter(ChannelRuntime())
    ctx = context()
    one, two = await adapter.parse(TestSignedWebhookContract().valid_request(), ctx)
    assert (one.provider_message_id, one.thread_key) == ("msg-1", "signedwebhook:order-1234")
    assert (two.sender.address, two.thread_key) == ("user-43", "signedwebhook:user-43")
    [single] = await adapter.parse(signed_request({"id": "m", "from": "u", "text": "x"}), ctx)
    assert single.text == "x"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 422),
        (b'{"id": "m", "text": "no sender"}', 422),
        (b'{"id": "", "from": "u", "text": "x"}', 422),
        (b'{"messages": "nope"}', 422),
    ],
)
async def test_unreadable_bodies_are_clear_4xx(body: bytes, status: int) -> None:
    request = with_body(signed_request({}), body)
    with pytest.raises(ChannelRequestError) as refused:
        await SignedWebhookAdapter(ChannelRuntime()).parse(request, context())
    assert refused.value.status == status


async def test_partner_outages_are_retried_and_refusals_are_permanent() -> None:
    message = OutboundMessageRequested(
        workspace_id=WORKSPACE,
        conversation_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        channel=Channel.SOCIAL,
        recipient_address="user-42",
        text="Hi",
        created_at=datetime.now(UTC),
        channel_account_id=ACCOUNT,
    )
    adapter = SignedWebhookAdapter(ChannelRuntime())
    with partner_stand_in([503, 400]) as (url, recorder):
        with pytest.raises(ProviderUnavailableError):
            await adapter.send(message, context(url))
        with pytest.raises(PermanentDeliveryError):
            await adapter.send(message, context(url))
        result = await adapter.send(message, context(url))
    assert result.provider_message_id == "partner-77"
    assert len(recorder.received) == 1
