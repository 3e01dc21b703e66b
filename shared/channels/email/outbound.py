"""Outbound email: the reply as a MIME message, sent through an SMTP relay (aiosmtplib).

The headers were decided when the reply was stored (``OutboundEmail``): our own
``Message-ID``, ``In-Reply-To`` and ``References`` pointing at the customer's message,
and a ``Reply-To`` carrying the conversation's reply token, so the customer's answer
threads back even when their mailer drops the headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime

import aiosmtplib

from shared.channels.protocol import PermanentDeliveryError, ProviderUnavailableError
from shared.events import OutboundMessageRequested

# Headers unfolded up to RFC 5322's 998 characters (some mailers mishandle a folded
# Message-ID, and threading depends on it); 7-bit transfer encodings, so any relay
# takes the message without 8BITMIME.
WIRE_POLICY = SMTP_POLICY.clone(max_line_length=998, cte_type="7bit")


@dataclass(frozen=True)
class SmtpRelay:
    """Where outbound email is handed over (the provider's SMTP endpoint)."""

    host: str | None
    port: int = 587
    username: str | None = None
    password: str | None = None
    start_tls: bool | None = None
    use_tls: bool = False
    timeout_seconds: float = 30.0

    @property
    def configured(self) -> bool:
        return bool(self.host)


def compose_email(message: OutboundMessageRequested) -> EmailMessage:
    """The MIME message for an outbound email reply."""
    details = message.email
    if details is None:
        raise PermanentDeliveryError("the outbound email has no email headers")
    mail = EmailMessage(policy=WIRE_POLICY)
    local, _, domain = details.from_address.rpartition("@")
    mail["From"] = Address(display_name=details.from_name or "", username=local, domain=domain)
    mail["To"] = message.recipient_address
    if details.reply_to:
        mail["Reply-To"] = details.reply_to
    mail["Subject"] = details.subject
    mail["Date"] = format_datetime(message.created_at)
    mail["Message-ID"] = details.message_id
    if details.in_reply_to:
        mail["In-Reply-To"] = details.in_reply_to
    if details.references:
        mail["References"] = " ".join(details.references)
    if details.auto_submitted:
        mail["Auto-Submitted"] = "auto-replied"
    mail["X-Omniroute-Conversation"] = str(message.conversation_id)
    mail.set_content(message.text)
    return mail


async def send_email(mail: EmailMessage, relay: SmtpRelay) -> None:
    """Hand ``mail`` to the relay; ProviderUnavailableError for anything worth retrying."""
    if not relay.configured:
        # Not retried forever: without a relay nothing will change until a redeploy, and
        # the dead-letter topic keeps the reply for a replay.
        raise PermanentDeliveryError("no SMTP relay configured (OMNI_SMTP_RELAY_HOST)")
    sender = mail["From"].addresses[0].addr_spec if mail["From"] else ""
    recipients = [a.addr_spec for a in mail["To"].addresses] if mail["To"] else []
    # Flattened here: aiosmtplib would re-fold the headers with its own policy.
    wire = mail.as_bytes(policy=WIRE_POLICY)
    try:
        await aiosmtplib.send(
            wire,
            sender=sender,
            recipients=recipients,
            hostname=relay.host,
            port=relay.port,
            username=relay.username,
            password=relay.password,
            start_tls=relay.start_tls,
            use_tls=relay.use_tls,
            timeout=relay.timeout_seconds,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        if codes and all(400 <= code < 500 for code in codes):
            raise ProviderUnavailableError(f"recipient deferred: {exc}") from exc
        raise PermanentDeliveryError(f"recipient refused: {exc}") from exc
    except aiosmtplib.SMTPResponseException as exc:
        if 400 <= exc.code < 500:
            raise ProviderUnavailableError(f"relay deferred ({exc.code}): {exc.message}") from exc
        raise PermanentDeliveryError(f"relay refused ({exc.code}): {exc.message}") from exc
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise ProviderUnavailableError(f"relay unreachable: {exc}") from exc
