"""ingest's SMTP listener (aiosmtpd): the receiving end for workspaces' addresses.

It accepts mail only for known, enabled email accounts (``550 5.1.1`` otherwise, so it
is no open relay), refuses messages over the size limit (``552``, aiosmtpd's
``data_size_limit``) and malformed or undecodable ones (``550``/``554 5.6.x``), and
answers ``250`` only after the broker acknowledged the message. A ``451`` (broker or
database trouble) makes the sending server retry later.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any, Final

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from services.ingest.deps import IngestState
from services.ingest.inbound import accept_delivery, channel_context
from shared.channels.email.headers import base_address
from shared.channels.identities import InvalidIdentityError, normalize_email
from shared.channels.protocol import (
    ChannelAccount,
    ChannelRequestError,
    InboundRequest,
    SmtpEnvelope,
)
from shared.events import Channel

log = structlog.get_logger(__name__)

SMTP_ADAPTER: Final = "email"
MAX_RECIPIENTS: Final = 50
ACCEPTED: Final = "250 2.0.0 Message accepted for delivery"
TEMPORARY_FAILURE: Final = "451 4.3.0 Temporary failure; try again later"


class SmtpIngestHandler:
    """aiosmtpd handler hooks (``handle_RCPT``, ``handle_DATA``)."""

    def __init__(self, ingest: IngestState) -> None:
        self._ingest = ingest
        self._adapter = ingest.registry.get(SMTP_ADAPTER)

    async def _account(self, address: str) -> ChannelAccount | None:
        return await self._ingest.accounts.by_address(Channel.EMAIL, base_address(address))

    async def handle_RCPT(
        self,
        server: SMTP,  # noqa: ARG002
        session: Session,  # noqa: ARG002
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        try:
            normalized = normalize_email(address)
        except InvalidIdentityError:
            return "553 5.1.3 Malformed recipient address"
        try:
            account = await self._account(normalized)
        except Exception as exc:  # database trouble: the sender retries later
            log.warning("recipient lookup failed", error=str(exc))
            return TEMPORARY_FAILURE
        if account is None:
            return "550 5.1.1 No such recipient here"
        envelope.rcpt_tos.append(normalized)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(
        self,
        server: SMTP,  # noqa: ARG002
        session: Session,
        envelope: Envelope,
    ) -> str:
        raw = envelope.original_content
        if not isinstance(raw, bytes):
            raw = envelope.content if isinstance(envelope.content, bytes) else b""
        try:
            return await self._deliver(raw, envelope, session)
        except ChannelRequestError as error:
            log.info("email refused", reply=error.smtp_reply)
            return error.smtp_reply
        except Exception as exc:  # never a 5xx for our own trouble: the sender retries
            log.exception("email delivery failed", error=str(exc))
            return TEMPORARY_FAILURE

    async def _deliver(self, raw: bytes, envelope: Envelope, session: Session) -> str:
        accounts: dict[uuid.UUID, ChannelAccount] = {}
        by_account: dict[uuid.UUID, list[str]] = defaultdict(list)
        for recipient in envelope.rcpt_tos:
            account = await self._account(recipient)
            if account is not None:
                accounts[account.id] = account
                by_account[account.id].append(recipient)
        if not by_account:
            return "554 5.5.1 No valid recipients"
        peer = session.peer
        for account_id, recipients in by_account.items():
            account = accounts[account_id]
            request = InboundRequest(
                body=raw,
                method="SMTP",
                envelope=SmtpEnvelope(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(recipients),
                    peer=str(peer[0]) if isinstance(peer, tuple) and peer else None,
                ),
            )
            ctx = channel_context(self._ingest, account)
            await accept_delivery(self._ingest, self._adapter, request, ctx)
        return ACCEPTED


class SmtpListener:
    """The listening socket, in the service's own event loop (no extra thread)."""

    def __init__(self, ingest: IngestState, *, host: str, port: int) -> None:
        self._ingest = ingest
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        bound: Any = self._server.sockets[0].getsockname()
        return int(bound[1])

    async def start(self) -> None:
        handler = SmtpIngestHandler(self._ingest)
        settings = self._ingest.settings

        def protocol() -> SMTP:
            return SMTP(
                handler,
                data_size_limit=self._ingest.limits.max_message_bytes,
                enable_SMTPUTF8=True,
                hostname=settings.smtp_server_name,
                ident="omniroute ESMTP",
                timeout=60,
            )

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol, host=self._host, port=self._port)
        log.info("SMTP listener started", host=self._host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
