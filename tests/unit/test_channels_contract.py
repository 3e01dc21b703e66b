"""The contract kit run against every built-in adapter, as an adapter package would."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.ingest.adapters.email.mailgun import MailgunRoutesAdapter, sign_for_test
from services.ingest.adapters.email.sendgrid import SendGridInboundParseAdapter
from services.ingest.adapters.email.smtp import SmtpEmailAdapter
from services.ingest.adapters.webchat import (
    ChatSession,
    WebChatAdapter,
    WebChatConfig,
    issue_session_token,
)
from services.ingest.webchat_hub import WebChatHub
from shared.channels.contract import (
    ChannelAdapterContract,
    ReceivedEmail,
    Recorder,
    form_request,
    smtp_stand_in,
    with_header,
)
from shared.channels.email.outbound import SmtpRelay
from shared.channels.protocol import (
    ChannelAccount,
    ChannelAdapter,
    ChannelRuntime,
    InboundRequest,
    SmtpEnvelope,
)
from shared.events import (
    Channel,
    MessageReceived,
    OutboundEmail,
    OutboundMessageRequested,
)
from tests.unit.test_email_mime import sample_email

WORKSPACE = uuid.UUID("00000000-0000-4000-8000-00000000c0de")
CHAT_SECRET = "contract-chat-secret-0123456789abcdef"


# Web chat ------------------------------------------------------------------------------


class RecordingHub(WebChatHub):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def deliver(self, session_id: str, frame: dict[str, Any]) -> int:
        self.recorder.record((session_id, frame))
        return 1


class TestWebChatContract(ChannelAdapterContract):
    signature_covers_body = False  # a bearer session token
    session = ChatSession("wcs_contract", WORKSPACE, "Grace", "grace@example.com")

    def make_adapter(self) -> ChannelAdapter:
        hub = getattr(self, "hub", None) or WebChatHub()
        runtime = ChannelRuntime(
            services={WebChatHub: hub, WebChatConfig: WebChatConfig(session_secret=CHAT_SECRET)}
        )
        return WebChatAdapter(runtime)

    def token(self, *, secret: str = CHAT_SECRET, issued: datetime | None = None) -> str:
        token, _ = issue_session_token(
            self.session, secret=secret, ttl=timedelta(minutes=5), now=issued
        )
        return token

    def valid_request(self) -> InboundRequest:
        return InboundRequest(
            body=json.dumps({"text": "Where is my order?", "client_message_id": "m-1"}).encode(),
            headers={
                "authorization": f"Bearer {self.token()}",
                "content-type": "application/json",
            },
            path_params={"session_id": self.session.session_id},
        )

    def forged_requests(self, valid: InboundRequest) -> list[tuple[str, InboundRequest]]:
        expired = self.token(issued=datetime.now(UTC) - timedelta(hours=1))
        return [
            ("no token", with_header(valid, "authorization", None)),
            (
                "signed elsewhere",
                with_header(valid, "authorization", f"Bearer {self.token(secret='x' * 40)}"),
            ),
            ("expired", with_header(valid, "authorization", f"Bearer {expired}")),
            ("garbage", with_header(valid, "authorization", "Bearer not.a.jwt")),
        ]

    def stand_in(self) -> AbstractAsyncContextManager[Recorder]:
        @contextlib.asynccontextmanager
        async def socket_hub() -> AsyncIterator[Recorder]:
            recorder = Recorder()
            self.hub = RecordingHub(recorder)
            yield recorder

        return socket_hub()

    def check_delivery(self, message: OutboundMessageRequested, delivered: Any) -> None:
        session_id, frame = delivered
        assert session_id == self.session.session_id
        assert frame["type"] == "message"
        assert frame["text"] == message.text
        assert frame["message_id"] == str(message.message_id)

    async def test_the_given_email_is_a_claimed_identity(self) -> None:
        [message] = await self.deliver(
            self.make_adapter(), self.valid_request(), self.make_context()
        )

        assert [(c.kind.value, c.address) for c in message.sender.identities] == [
            ("email", "grace@example.com")
        ]


# Email adapters ----------------------------------------------------------------------


class EmailContract(ChannelAdapterContract):
    address = "support@contract.omniroute.dev"
    relay_port = 0

    def account(self) -> ChannelAccount | None:
        return ChannelAccount(
            id=uuid.UUID("00000000-0000-4000-8000-0000000ac001"),
            workspace_id=WORKSPACE,
            channel=Channel.EMAIL,
            adapter=self.adapter_name(),
            address=self.address,
            secret=self.secret(),
        )

    def adapter_name(self) -> str:
        raise NotImplementedError

    def secret(self) -> str | None:
        return None

    def runtime(self) -> ChannelRuntime:
        relay = SmtpRelay(host="127.0.0.1", port=self.relay_port, start_tls=False)
        return ChannelRuntime(services={SmtpRelay: relay})

    def raw(self) -> bytes:
        return sample_email(
            to=self.address,
            message_id="<contract-1@example.com>",
            attachments=(("report.csv", b"a,b\n1,2\n", "text/csv"),),
        )

    def stand_in(self) -> AbstractAsyncContextManager[Recorder]:
        @contextlib.asynccontextmanager
        async def smtp_server() -> AsyncIterator[Recorder]:
            with smtp_stand_in() as (recorder, port):
                self.relay_port = port
                yield recorder

        return smtp_server()

    def outbound_message(self, inbound: MessageReceived) -> OutboundMessageRequested:
        message = super().outbound_message(inbound)
        return message.model_copy(
            update={
                "email": OutboundEmail(
                    from_address=self.address,
                    from_name="Contract Support",
                    reply_to=self.address.replace("support@", "support+abcdefghijkmnpqr@"),
                    subject="Re: Order 1234 is late",
                    message_id="<reply-1@contract.omniroute.dev>",
                    in_reply_to="<contract-1@example.com>",
                    references=("<contract-1@example.com>",),
                )
            }
        )

    def check_delivery(self, message: OutboundMessageRequested, delivered: Any) -> None:
        assert isinstance(delivered, ReceivedEmail)
        assert message.email is not None
        mail = delivered.message
        assert delivered.rcpt_tos == (message.recipient_address,)
        assert mail["Message-ID"] == message.email.message_id
        assert mail["In-Reply-To"] == "<contract-1@example.com>"
        assert mail["References"] == "<contract-1@example.com>"
        assert mail["Subject"] == "Re: Order 1234 is late"
        assert mail["From"].addresses[0].addr_spec == self.address
        assert mail["Reply-To"] == message.email.reply_to
        assert mail.get_content().strip() == message.text


class TestSmtpEmailContract(EmailContract):
    signed = False

    def adapter_name(self) -> str:
        return "email"

    def make_adapter(self) -> ChannelAdapter:
        return SmtpEmailAdapter(self.runtime())

    def valid_request(self) -> InboundRequest:
        return InboundRequest(
            body=self.raw(),
            method="SMTP",
            envelope=SmtpEnvelope(mail_from="grace@example.com", rcpt_tos=(self.address,)),
        )


SENDGRID_AUTH = "inbound:parse-secret-0123456789"


class TestSendGridContract(EmailContract):
    signature_covers_body = False  # HTTP Basic credentials

    def adapter_name(self) -> str:
        return "sendgrid"

    def secret(self) -> str | None:
        return SENDGRID_AUTH

    def make_adapter(self) -> ChannelAdapter:
        return SendGridInboundParseAdapter(self.runtime())

    def basic(self, credentials: str) -> dict[str, str]:
        return {"authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}

    def valid_request(self) -> InboundRequest:
        return form_request(
            {
                "email": self.raw().decode(),
                "envelope": json.dumps({"to": [self.address], "from": "grace@example.com"}),
            },
            files={"placeholder": ("x.txt", b"", "text/plain")},
            headers=self.basic(SENDGRID_AUTH),
        )

    def forged_requests(self, valid: InboundRequest) -> list[tuple[str, InboundRequest]]:
        return [
            ("no credentials", with_header(valid, "authorization", None)),
            (
                "wrong password",
                with_header(valid, "authorization", self.basic("inbound:nope")["authorization"]),
            ),
        ]


MAILGUN_KEY = "contract-mailgun-signing-key"


class TestMailgunContract(EmailContract):
    # Mailgun signs timestamp + token, two form fields, and nothing else of the body.
    signature_covers_body = False
    signature_headers = ()

    def adapter_name(self) -> str:
        return "mailgun"

    def secret(self) -> str | None:
        return MAILGUN_KEY

    def make_adapter(self) -> ChannelAdapter:
        return MailgunRoutesAdapter(self.runtime())

    def fields(self, **signature: Any) -> dict[str, str]:
        signed = sign_for_test(
            signature.get("key", MAILGUN_KEY),
            token=signature.get("token", uuid.uuid4().hex * 2),
            timestamp=signature.get("timestamp"),
        )
        return {
            **signed,
            "recipient": self.address,
            "message-headers": json.dumps(
                [
                    ["From", "Grace <grace@example.com>"],
                    ["To", self.address],
                    ["Subject", "Order 1234 is late"],
                    ["Message-Id", "<contract-1@example.com>"],
                ]
            ),
            "body-plain": "Hello, where is my order?",
        }

    def valid_request(self) -> InboundRequest:
        return form_request(
            self.fields(), files={"attachment-1": ("report.csv", b"a,b\n1,2\n", "text/csv")}
        )

    def redelivery(self, request: InboundRequest) -> InboundRequest:  # noqa: ARG002
        return self.valid_request()  # Mailgun signs each attempt with a fresh token

    def forged_requests(self, valid: InboundRequest) -> list[tuple[str, InboundRequest]]:  # noqa: ARG002
        stale = int(time.time()) - 3600
        return [
            ("signed with another key", form_request(self.fields(key="another-key"))),
            ("stale timestamp", form_request(self.fields(timestamp=stale))),
            ("no signature", form_request({**self.fields(), "signature": ""})),
            ("tampered token", form_request({**self.fields(), "token": "x" * 50})),
        ]


def test_the_kit_catches_an_adapter_that_breaks_the_contract() -> None:
    """The kit must be able to fail: a dedupe id that changes on redelivery is caught."""

    class Flaky(SmtpEmailAdapter):
        async def parse(self, request: InboundRequest, ctx: Any) -> list[MessageReceived]:
            [message] = await super().parse(request, ctx)
            return [message.model_copy(update={"provider_message_id": uuid.uuid4().hex})]

    class FlakyContract(TestSmtpEmailContract):
        def make_adapter(self) -> ChannelAdapter:
            return Flaky(self.runtime())

    import asyncio

    with pytest.raises(AssertionError, match="keeps its provider message id"):
        asyncio.run(FlakyContract().test_dedupe_ids_are_stable_across_redelivery())
