"""A parsed email, received at one of a workspace's addresses, as a normalized message.

Shared by every way email comes in (the SMTP listener, SendGrid, Mailgun), so the
same email yields the same ``provider_message_id`` and thread key whichever way it
arrived.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from shared.channels.email.headers import (
    base_address,
    bounded_id,
    reply_token_of,
    thread_root,
)
from shared.channels.email.mime import ParsedEmail
from shared.channels.email.text import strip_quoted_reply
from shared.channels.identities import InvalidIdentityError, normalize_email
from shared.channels.protocol import ChannelAccount, ChannelContext, ChannelRequestError
from shared.events import AttachmentInfo, Channel, InboundEmail, MessageReceived, Sender

RAW_MESSAGE_FILENAME = "message.eml"


def provider_message_id(parsed: ParsedEmail) -> str:
    """Stable across redeliveries: the ``Message-ID``, or a hash of what the mail says."""
    if parsed.message_id:
        return bounded_id("", parsed.message_id)
    fingerprint = "\x1f".join(
        [
            parsed.sender_address,
            ",".join(parsed.to),
            parsed.subject,
            parsed.date.isoformat() if parsed.date else "",
            parsed.text,
        ]
    )
    return "sha256:" + hashlib.sha256(fingerprint.encode()).hexdigest()


def thread_key(parsed: ParsedEmail, provider_id: str) -> str:
    root = thread_root(parsed.message_id, parsed.in_reply_to, parsed.references)
    return bounded_id("email:", root or provider_id, limit=400)


def recipient_for_account(account: ChannelAccount, candidates: Iterable[str]) -> str | None:
    """The first candidate that is the account's address or a ``+tag`` variant of it."""
    ours = account.address.lower()
    for candidate in candidates:
        try:
            address = normalize_email(candidate)
        except InvalidIdentityError:
            continue
        if base_address(address) == ours:
            return address
    return None


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def normalize_inbound_email(
    parsed: ParsedEmail,
    ctx: ChannelContext,
    *,
    envelope_recipients: Iterable[str] = (),
    raw: bytes | None = None,
) -> MessageReceived:
    """The message for ``ctx.account``; 422 if the email was not addressed to it."""
    account = ctx.require_account()
    recipient = recipient_for_account(account, [*envelope_recipients, *parsed.to, *parsed.cc])
    if recipient is None:
        raise ChannelRequestError(
            422,
            f"The email is not addressed to {account.address}.",
            smtp_reply=f"550 5.1.1 Not addressed to {account.address}",
        )
    provider_id = provider_message_id(parsed)
    limits = ctx.limits
    attachments = []
    for attachment in parsed.attachments:
        key = await ctx.attachments.put(
            account.workspace_id, attachment.filename, attachment.content
        )
        attachments.append(
            AttachmentInfo(
                filename=_truncate(attachment.filename, 255),
                content_type=attachment.content_type[:255],
                size=len(attachment.content),
                storage_key=key,
                content_id=attachment.content_id[:500] if attachment.content_id else None,
                inline=attachment.inline,
            )
        )
    raw_key = (
        await ctx.attachments.put(account.workspace_id, RAW_MESSAGE_FILENAME, raw)
        if raw is not None
        else None
    )
    display = parsed.stripped_text if parsed.stripped_text else strip_quoted_reply(parsed.text)
    return MessageReceived(
        workspace_id=account.workspace_id,
        channel=Channel.EMAIL,
        provider_message_id=provider_id,
        thread_key=thread_key(parsed, provider_id),
        sender=Sender(
            address=parsed.sender_address,
            display_name=_truncate(parsed.sender_name, 200) if parsed.sender_name else None,
        ),
        text=_truncate(display, limits.max_text_chars),
        received_at=ctx.now,
        channel_account_id=account.id,
        subject=_truncate(parsed.subject, 998) or None,
        attachments=tuple(attachments),
        email=InboundEmail(
            message_id=parsed.message_id,
            in_reply_to=parsed.in_reply_to,
            references=parsed.references,
            recipient=account.address,
            reply_token=reply_token_of(recipient),
            to=parsed.to[:50],
            cc=parsed.cc[:50],
            original_text=_truncate(parsed.text, limits.max_text_chars),
            raw_storage_key=raw_key,
            auto_submitted=parsed.auto_submitted,
        ),
    )
