"""The contract test kit: what every channel adapter must do, as pytest tests.

An adapter package subclasses ``ChannelAdapterContract`` in its own tests and fills in
the hooks; pytest then runs the contract against the adapter::

    class TestMyAdapterContract(ChannelAdapterContract):
        def make_adapter(self) -> ChannelAdapter: ...
        def account(self) -> ChannelAccount | None: ...
        def valid_request(self) -> InboundRequest: ...
        def forged_requests(self, valid) -> list[tuple[str, InboundRequest]]: ...
        def stand_in(self) -> AbstractAsyncContextManager[Recorder]: ...
        def check_delivery(self, message, delivered) -> None: ...

The contract: forged requests are refused with 401/403 before anything is parsed;
a redelivered request yields the same dedupe ids and thread keys; normalized messages
keep the event invariants (and survive the Kafka encoding); an outbound message sent
to a stand-in of the provider arrives there as the provider would receive it.
Async tests need pytest-asyncio (``asyncio_mode = "auto"`` or the markers used here).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import httpx
import pytest

from shared.bus.port import BusRecord
from shared.channels.attachments import MemoryAttachmentStore
from shared.channels.identities import InvalidIdentityError, normalize_email
from shared.channels.protocol import (
    ChannelAccount,
    ChannelAdapter,
    ChannelContext,
    ChannelLimits,
    ChannelRequestError,
    InboundRequest,
)
from shared.events import (
    Channel,
    Event,
    MessageReceived,
    OutboundMessageRequested,
    Topic,
    decode_event,
    encode_event,
    inbound_key,
)

SIGNATURE_STATUSES = (401, 403)


class Recorder:
    """What a provider stand-in received; safe to fill from the stand-in's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Any] = []

    def record(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)

    @property
    def received(self) -> list[Any]:
        with self._lock:
            return list(self._items)

    async def wait_for(self, count: int, *, within_seconds: float = 5.0) -> list[Any]:
        deadline = time.monotonic() + within_seconds
        while True:
            items = self.received
            if len(items) >= count or time.monotonic() > deadline:
                return items
            await asyncio.sleep(0.02)


# Building provider requests ---------------------------------------------------------


def form_request(
    fields: dict[str, str],
    *,
    files: dict[str, tuple[str, bytes, str]] | None = None,
    headers: dict[str, str] | None = None,
    url: str = "https://ingest.example/v1/channels/test",
    path_params: dict[str, str] | None = None,
) -> InboundRequest:
    """A form POST as a provider sends it (multipart when there are files)."""
    request = httpx.Request("POST", url, data=fields, files=files or None)
    body = request.read()
    merged = {k.lower(): v for k, v in request.headers.items()}
    merged.update({k.lower(): v for k, v in (headers or {}).items()})
    return InboundRequest(body=body, url=url, headers=merged, path_params=dict(path_params or {}))


def with_header(request: InboundRequest, name: str, value: str | None) -> InboundRequest:
    headers = {k: v for k, v in request.headers.items() if k != name.lower()}
    if value is not None:
        headers[name.lower()] = value
    return replace(request, headers=headers)


def with_body(request: InboundRequest, body: bytes) -> InboundRequest:
    headers = dict(request.headers)
    if "content-length" in headers:
        headers["content-length"] = str(len(body))
    return replace(request, body=body, headers=headers)


# A provider stand-in for email adapters ---------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class ReceivedEmail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage


class _RecordingSmtpHandler:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: ARG002
        parsed = message_from_bytes(envelope.original_content, policy=default_policy)
        assert isinstance(parsed, EmailMessage)  # noqa: S101 - policy.default gives these
        self._recorder.record(ReceivedEmail(envelope.mail_from, tuple(envelope.rcpt_tos), parsed))
        return "250 2.0.0 OK"


@contextlib.contextmanager
def smtp_stand_in(port: int | None = None) -> Any:
    """A real SMTP server on loopback (aiosmtpd) recording what it receives.

    Yields ``(recorder, port)``; the adapter's SMTP relay points at that port.
    """
    from aiosmtpd.controller import Controller

    recorder = Recorder()
    chosen = port or free_port()
    controller = Controller(_RecordingSmtpHandler(recorder), hostname="127.0.0.1", port=chosen)
    controller.start()
    try:
        yield recorder, chosen
    finally:
        controller.stop()


# The contract --------------------------------------------------------------------------


def workspace_of(account: ChannelAccount | None) -> uuid.UUID | None:
    return account.workspace_id if account is not None else None


def check_invariants(
    adapter: ChannelAdapter, ctx: ChannelContext, messages: Sequence[MessageReceived]
) -> None:
    """The properties every normalized inbound message has (raises AssertionError)."""
    account = ctx.account
    for message in messages:
        assert message.channel is adapter.channel, "a message of another channel"  # noqa: S101
        if account is not None:
            assert message.workspace_id == account.workspace_id, "the account's workspace"  # noqa: S101
            assert message.channel_account_id == account.id, "the receiving account"  # noqa: S101
        pid = message.provider_message_id
        assert pid, "a dedupe id"  # noqa: S101
        assert pid == pid.strip(), "a dedupe id without surrounding blanks"  # noqa: S101
        assert len(pid) <= 200, "a dedupe id of at most 200 characters"  # noqa: S101
        assert message.thread_key.strip(), "a thread key"  # noqa: S101
        address = message.sender.address
        assert address == address.strip(), "a normalized sender address"  # noqa: S101
        if message.channel is Channel.EMAIL:
            try:
                normalized = normalize_email(address)
            except InvalidIdentityError as exc:
                raise AssertionError(f"sender {address!r} is no email address") from exc
            assert normalized == address, "email senders are normalized"  # noqa: S101
            assert message.email is not None, "email messages carry their headers"  # noqa: S101
        assert message.received_at.tzinfo is not None, "an aware received_at"  # noqa: S101
        for attachment in message.attachments:
            assert attachment.storage_key, "attachments are stored"  # noqa: S101
        record = encode_event(
            Event.of(message, source="contract"),
            topic=Topic.INBOUND.value,
            key=inbound_key(message.workspace_id, message.channel, address),
        )
        decoded = decode_event(
            BusRecord(
                topic=record.topic,
                partition=0,
                offset=0,
                key=record.key,
                value=record.value,
                headers=record.headers,
            )
        )
        assert decoded.data == message, "the message survives the Kafka encoding"  # noqa: S101


class ChannelAdapterContract:
    """Subclass (named ``Test…``) and implement the hooks; pytest runs the contract."""

    #: False for adapters whose requests are not signed (then forged requests are none).
    signed: bool = True

    # Hooks --------------------------------------------------------------------------

    def make_adapter(self) -> ChannelAdapter:
        raise NotImplementedError

    def account(self) -> ChannelAccount | None:
        """The channel account requests arrive at (None for channels without accounts)."""
        return None

    def valid_request(self) -> InboundRequest:
        """A genuine provider request holding at least one message."""
        raise NotImplementedError

    def redelivery(self, request: InboundRequest) -> InboundRequest:
        """The same message delivered again (providers that re-sign retries override)."""
        return request

    def forged_requests(
        self,
        valid: InboundRequest,  # noqa: ARG002 - the base of the forgeries
    ) -> list[tuple[str, InboundRequest]]:
        """Requests that must fail verification: wrong signature, none, tampered…"""
        return []

    def stand_in(self) -> AbstractAsyncContextManager[Recorder]:
        """A local stand-in of the provider's sending API, recording what arrives."""
        raise NotImplementedError

    def outbound_message(self, inbound: MessageReceived) -> OutboundMessageRequested:
        """A reply to ``inbound`` to send through the adapter."""
        return OutboundMessageRequested(
            workspace_id=inbound.workspace_id,
            conversation_id=uuid.uuid4(),
            message_id=uuid.uuid4(),
            channel=inbound.channel,
            recipient_address=inbound.sender.address,
            text="Thanks, we are on it.",
            agent_display_name="Ada",
            created_at=datetime.now(UTC),
            channel_account_id=inbound.channel_account_id,
        )

    def check_delivery(self, message: OutboundMessageRequested, delivered: Any) -> None:
        """Assert that what the stand-in received is ``message`` as the provider wants it."""
        raise NotImplementedError

    def make_context(self, *, now: datetime | None = None) -> ChannelContext:
        return ChannelContext(
            account=self.account(),
            attachments=MemoryAttachmentStore(),
            limits=ChannelLimits(),
            now=now or datetime.now(UTC),
        )

    async def deliver(
        self, adapter: ChannelAdapter, request: InboundRequest, ctx: ChannelContext
    ) -> list[MessageReceived]:
        """What ingest does with a request: verify, then parse."""
        await adapter.verify(request, ctx)
        return await adapter.parse(request, ctx)

    # The contract --------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_genuine_request_verifies_and_yields_messages(self) -> None:
        adapter = self.make_adapter()
        ctx = self.make_context()
        messages = await self.deliver(adapter, self.valid_request(), ctx)
        assert messages, "a genuine request yields at least one message"  # noqa: S101
        response = adapter.acknowledge(messages)
        assert 200 <= response.status < 300, "an accepted request is answered 2xx"  # noqa: S101

    @pytest.mark.asyncio
    async def test_forged_requests_are_refused_before_parsing(self) -> None:
        adapter = self.make_adapter()
        forged = self.forged_requests(self.valid_request())
        if not self.signed:
            assert forged == [], "an unsigned adapter has no forged requests"  # noqa: S101
            pytest.skip("the adapter's requests are not signed")
        assert forged, "a signed adapter lists forged requests to refuse"  # noqa: S101
        for label, request in forged:
            ctx = self.make_context()
            with pytest.raises(ChannelRequestError) as refused:
                await self.deliver(adapter, request, ctx)
            assert refused.value.status in SIGNATURE_STATUSES, (  # noqa: S101
                f"{label}: refused with {refused.value.status}, not 401/403"
            )
            store = ctx.attachments
            assert not getattr(store, "items", {}), f"{label}: nothing stored"  # noqa: S101

    @pytest.mark.asyncio
    async def test_dedupe_ids_are_stable_across_redelivery(self) -> None:
        adapter = self.make_adapter()
        valid = self.valid_request()
        first = await self.deliver(adapter, valid, self.make_context())
        later = datetime.now(UTC) + timedelta(seconds=30)
        again = await self.deliver(adapter, self.redelivery(valid), self.make_context(now=later))
        assert [m.provider_message_id for m in first] == [  # noqa: S101
            m.provider_message_id for m in again
        ], "a redelivered message keeps its provider message id"
        assert [m.thread_key for m in first] == [m.thread_key for m in again]  # noqa: S101

    @pytest.mark.asyncio
    async def test_normalized_messages_keep_the_invariants(self) -> None:
        adapter = self.make_adapter()
        ctx = self.make_context()
        messages = await self.deliver(adapter, self.valid_request(), ctx)
        check_invariants(adapter, ctx, messages)
        for message in messages:
            for attachment in message.attachments:
                content = await ctx.attachments.get(attachment.storage_key)
                assert len(content) == attachment.size, "the stored size is the size"  # noqa: S101

    @pytest.mark.asyncio
    async def test_outbound_round_trip_reaches_the_provider(self) -> None:
        inbound = (
            await self.deliver(self.make_adapter(), self.valid_request(), self.make_context())
        )[0]
        message = self.outbound_message(inbound)
        async with self.stand_in() as recorder:
            adapter = self.make_adapter()
            result = await adapter.send(message, self.make_context())
            delivered = await recorder.wait_for(1)
        assert result.provider_message_id, "the provider's id of the sent message"  # noqa: S101
        assert len(delivered) == 1, f"one delivery, got {len(delivered)}"  # noqa: S101
        self.check_delivery(message, delivered[0])


@contextlib.asynccontextmanager
async def recording(recorder: Recorder) -> AsyncIterator[Recorder]:
    """An already-running stand-in as a ``stand_in()`` result."""
    yield recorder
