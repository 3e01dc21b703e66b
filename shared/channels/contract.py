"""The contract test kit: what every channel adapter must do, as pytest tests.

An adapter package subclasses ``ChannelAdapterContract`` in its own tests and fills in
the hooks; pytest then runs the contract against the adapter::

    class TestMyAdapterContract(ChannelAdapterContract):
        signature_headers = ("x-my-signature",)  # where the signature travels
        def make_adapter(self) -> ChannelAdapter: ...
        def account(self) -> ChannelAccount | None: ...
        def valid_request(self) -> InboundRequest: ...
        def sign(self, request) -> InboundRequest | None: ...  # re-sign another body
        def forged_requests(self, valid) -> list[tuple[str, InboundRequest]]: ...
        def stand_in(self) -> AbstractAsyncContextManager[Recorder]: ...
        def check_delivery(self, message, delivered) -> None: ...

The contract: forged requests — the author's and the kit's own, derived from the
genuine request (body tampered, signature headers removed or every signature in them
altered) — are refused with 401/403 by ``verify``, before anything is parsed;
malformed requests (empty body, invalid JSON, a broken form, a wrong content type,
also correctly signed) are refused with a 4xx ``ChannelRequestError``, never another
exception; a redelivered request yields the same dedupe ids and thread keys;
normalized messages keep the event invariants (and survive the Kafka encoding); an
outbound message sent to a stand-in of the provider arrives there as the provider
would receive it.
Async tests need pytest-asyncio (``asyncio_mode = "auto"`` or the markers used here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
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
from urllib.parse import parse_qsl, urlencode

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
BODY_TAMPERED = "kit: body tampered (one byte changed)"


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


def _changed_character(text: str) -> str | None:
    """The ASCII letter or digit nearest the middle of ``text`` replaced by another of its
    kind (so a JSON document or a form stays well-formed), or None if there is none."""
    middle = len(text) // 2
    for index in sorted(range(len(text)), key=lambda i: abs(i - middle)):
        char = text[index]
        if not (char.isascii() and char.isalnum()):
            continue
        if char.isdigit():
            other = str((int(char) + 1) % 10)
        else:
            base = ord("a") if char.islower() else ord("A")
            other = chr(base + (ord(char) - base + 1) % 26)
        return text[:index] + other + text[index + 1 :]
    return None


# A signature or credential inside a header value: a run of hex or base64 characters
# longer than a scheme label (``sha256``, ``v1``) or a timestamp.
_SIGNATURE_LIKE = re.compile(r"[A-Za-z0-9+/_-]{16,}")


def altered_credentials(value: str) -> str | None:
    """``value`` with every signature in it changed, so that none still verifies: a
    header may carry several (Stripe's ``t=…,v1=…,v0=…``, one per key while a key is
    rotated), and an adapter rightly accepts any that matches. Values without such a
    run (short credentials) get one character near the middle changed."""
    if _SIGNATURE_LIKE.search(value) is None:
        return _changed_character(value)
    return _SIGNATURE_LIKE.sub(lambda run: _changed_character(run[0]) or run[0], value)


def tampered_body(body: bytes) -> bytes:
    """``body`` with one byte changed (a letter or digit near the middle, else appended)."""
    changed = _changed_character(body.decode("latin-1"))
    return changed.encode("latin-1") if changed is not None else body + b"x"


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def malformed_requests(valid: InboundRequest) -> list[tuple[str, InboundRequest, bool]]:
    """The kit's malformed variants of a genuine request: ``(label, request, strict)``.

    Strict ones must be refused with a 4xx ``ChannelRequestError``. The others are
    readable documents of an unexpected shape (``{}``, ``null``, fields emptied): they
    may also be answered with no messages, or with messages that keep the invariants;
    another exception (``KeyError``, ``TypeError``, ``JSONDecodeError`` …) fails them.
    """
    cases: list[tuple[str, InboundRequest, bool]] = [("empty body", with_body(valid, b""), True)]
    if valid.envelope is not None:  # an SMTP transaction: mail parsing is lenient by design
        cases.append(("binary garbage", with_body(valid, b"\x00\xff\xfe garbage"), False))
        return cases
    media = valid.content_type.split(";", 1)[0].strip().lower()
    if _is_json(media):
        cases += [
            ("invalid JSON", with_body(valid, b'{"truncated": '), True),
            ("JSON that is not UTF-8", with_body(valid, b'{"text": "\xff\xfe"}'), True),
            ("JSON {}", with_body(valid, b"{}"), False),
            ("JSON null", with_body(valid, b"null"), False),
            ("JSON [1, 2]", with_body(valid, b"[1, 2]"), False),
            ("JSON string", with_body(valid, b'"text"'), False),
        ]
        try:
            document = json.loads(valid.body)
        except ValueError:
            document = None
        if isinstance(document, dict) and document:
            nulled = json.dumps(dict.fromkeys(document)).encode()
            cases.append(("JSON with every field null", with_body(valid, nulled), False))
    elif media == "application/x-www-form-urlencoded":
        fields = parse_qsl(valid.body.decode("latin-1"), keep_blank_values=True)
        cases += [
            ("form that is not UTF-8", with_body(valid, b"From=%FF%FE&Body=\xff\xfe"), True),
            ("form of garbage", with_body(valid, b"%%%&&==\x00"), False),
            (
                "form with every field empty",
                with_body(
                    valid, urlencode(dict.fromkeys((name for name, _ in fields), "")).encode()
                ),
                False,
            ),
        ]
    elif media.startswith("multipart/"):
        cases += [
            ("truncated multipart", with_body(valid, valid.body[: len(valid.body) // 2]), True),
            ("multipart without its parts", with_body(valid, b"no parts here"), True),
            (
                "multipart without a boundary",
                with_header(valid, "content-type", media),
                True,
            ),
        ]
    foreign = with_header(with_body(valid, b"<xml>not this</xml>"), "content-type", "text/xml")
    cases.append(("wrong content type (XML)", foreign, True))
    return cases


def _looks_like_credentials(header: str) -> bool:
    return header == "authorization" or "signature" in header


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

    #: Whether the signature depends on the whole body (an HMAC over the raw body, or over
    #: every form field). False when the credentials do not (HTTP Basic, a bearer token) or
    #: cover only some fields (Mailgun signs timestamp + token): then the kit does not
    #: forge a tampered body, and ``sign`` defaults to the request as it is.
    signature_covers_body: bool = True

    #: The (lower-case) headers that carry the signature or credentials, each checked by
    #: the adapter; the kit forges requests without each and with each altered (every
    #: signature in it). None: the genuine request's one ``authorization`` or
    #: ``*signature*`` header; with several (Meta's X-Hub-Signature and
    #: X-Hub-Signature-256) the kit cannot tell which the adapter checks, so they must be
    #: declared. ``()`` for a signature that travels in the body (then
    #: ``forged_requests`` must forge it).
    signature_headers: tuple[str, ...] | None = None

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

    def sign(self, request: InboundRequest) -> InboundRequest | None:
        """``request`` (a genuine request with another body) signed as the provider would
        sign it, or None when that cannot be done for an arbitrary body.

        The kit signs its malformed bodies with it, so they pass ``verify`` and reach
        ``parse`` the way a provider's own odd request would. Unsigned adapters and those
        whose signature does not cover the body need not override it.
        """
        if not self.signed or not self.signature_covers_body:
            return request
        return None

    def forged_requests(
        self,
        valid: InboundRequest,  # noqa: ARG002 - the base of the forgeries
    ) -> list[tuple[str, InboundRequest]]:
        """Provider-specific requests that must fail verification (stale timestamps, wrong
        keys, signatures in the body…), in addition to the kit's own forgeries."""
        return []

    def kit_forgeries(self, valid: InboundRequest) -> list[tuple[str, InboundRequest]]:
        """The kit's forgeries of ``valid``: body tampered, signature headers removed or
        altered (see ``signature_covers_body`` and ``signature_headers``)."""
        forged: list[tuple[str, InboundRequest]] = []
        if self.signature_covers_body:
            forged.append((BODY_TAMPERED, with_body(valid, tampered_body(valid.body))))
        names = self.credential_headers(valid)
        for name in names:
            forged.append((f"kit: {name} header removed", with_header(valid, name, None)))
            altered = altered_credentials(valid.headers[name])
            if altered is not None:
                forged.append((f"kit: {name} header altered", with_header(valid, name, altered)))
        if len(names) > 1:
            stripped = valid
            for name in names:
                stripped = with_header(stripped, name, None)
            forged.append(("kit: every signature header removed", stripped))
        return forged

    def credential_headers(self, valid: InboundRequest) -> tuple[str, ...]:
        """The signature headers the kit forges: declared, else the one header of ``valid``
        that looks like credentials (none: none; several: the author must say which)."""
        if self.signature_headers is not None:
            missing = [h for h in self.signature_headers if h.lower() not in valid.headers]
            assert not missing, f"signature_headers {missing} are not in the valid request"  # noqa: S101
            return tuple(h.lower() for h in self.signature_headers)
        guessed = tuple(sorted(h for h in valid.headers if _looks_like_credentials(h)))
        assert len(guessed) <= 1, (  # noqa: S101
            "the valid request carries several headers that look like credentials "
            f"({', '.join(guessed)}) and the kit cannot tell which the adapter checks (Meta "
            "sends X-Hub-Signature and X-Hub-Signature-256; an adapter rightly checks only "
            "the latter): declare signature_headers with the ones it checks"
        )
        return guessed

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
        valid = self.valid_request()
        authored = self.forged_requests(valid)
        if not self.signed:
            assert authored == [], "an unsigned adapter has no forged requests"  # noqa: S101
            pytest.skip("the adapter's requests are not signed")
        assert self.signature_headers is not None or self.credential_headers(valid), (  # noqa: S101
            "no authorization or *signature* header in the valid request: declare "
            "signature_headers (() if the signature travels in the body)"
        )
        forged = [*self.kit_forgeries(valid), *authored]
        assert forged, "a signed adapter has forged requests to refuse"  # noqa: S101
        problems = []
        for label, request in forged:
            ctx = self.make_context()
            try:
                # ingest refuses replays and parses only what verify let through
                await adapter.verify(request, ctx)
            except ChannelRequestError as refused:
                if refused.status not in SIGNATURE_STATUSES:
                    problems.append(f"{label}: refused with {refused.status}, not 401/403")
            except Exception as exc:
                problems.append(f"{label}: verify raised {type(exc).__name__}: {exc}")
            else:
                problem = f"{label}: accepted by verify (forgeries are refused there)"
                if label == BODY_TAMPERED:
                    problem += (
                        "; if the provider signs only some fields (or the credentials do not "
                        "depend on the body), declare signature_covers_body = False and forge "
                        "the signed fields in forged_requests"
                    )
                problems.append(problem)
            if getattr(ctx.attachments, "items", {}):
                problems.append(f"{label}: something was stored")
        assert not problems, "forged requests not refused:\n" + "\n".join(problems)  # noqa: S101

    @pytest.mark.asyncio
    async def test_malformed_requests_are_refused_with_a_4xx(self) -> None:
        adapter = self.make_adapter()
        problems = []
        for label, request, strict in malformed_requests(self.valid_request()):
            # parse as ingest calls it after a verify that passed, then (when the hooks can
            # sign the body) the whole way, verify included
            attempts = [("parse", request, False)]
            signed = self.sign(request)
            if signed is not None:
                attempts.append(("signed, verify + parse", signed, True))
            for way, attempt, verify in attempts:
                problem = await self._malformed_outcome(adapter, attempt, strict, verify=verify)
                if problem is not None:
                    problems.append(f"{label} ({way}): {problem}")
        assert not problems, "malformed requests not refused cleanly:\n" + "\n".join(problems)  # noqa: S101

    async def _malformed_outcome(
        self, adapter: ChannelAdapter, request: InboundRequest, strict: bool, *, verify: bool
    ) -> str | None:
        """What is wrong with how ``adapter`` took a malformed request (None: nothing)."""
        ctx = self.make_context()
        try:
            if verify:
                await adapter.verify(request, ctx)
            messages = await adapter.parse(request, ctx)
            await adapter.map_receipt(request, ctx)
        except ChannelRequestError as refused:
            if 400 <= refused.status < 500:
                return None
            return f"refused with {refused.status}, not a 4xx"
        except Exception as exc:
            return (
                f"raised {type(exc).__name__}: {exc} (ingest answers that with a 500 and the "
                "provider retries; raise ChannelRequestError with a 4xx)"
            )
        if strict:
            return f"accepted with {len(messages)} message(s), not refused with a 4xx"
        try:
            check_invariants(adapter, ctx, messages)
        except AssertionError as exc:
            return f"yielded a message that breaks the invariants: {exc}"
        return None

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
        keys = [
            (await adapter.verify(request, self.make_context(now=later))).replay_key
            for request in (valid, self.redelivery(valid))
        ]
        assert keys[0] is None or keys[0] != keys[1], (  # noqa: S101
            "a redelivery carries the first delivery's replay_key, so ingest would refuse "
            "the provider's retry as a replay (409): replay_key is a one-time token of one "
            "attempt, never the message id (the router dedupes redeliveries on that)"
        )

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
