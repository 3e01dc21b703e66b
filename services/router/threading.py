"""Which conversation an inbound email belongs to, and why.

The decision (``decide_email_thread``) is pure; ``find_email_thread`` gathers what it
needs from the database. Order (RFC 5322 §3.6.4 first, heuristics last):

1. ``In-Reply-To`` names a message we have (ours or the customer's);
2. ``References``, newest first;
3. the reply token of a ``support+<token>@…`` recipient (mailers that drop headers);
4. the same sender's recent open conversation with the same subject (Re:/Fwd: aside);
5. an open conversation of the same thread root (a follow-up of a resolved thread);
6. otherwise a new conversation.

A header or token match to a *resolved* conversation does not reopen it: the message
starts (or joins) the thread's follow-up conversation, which records the old one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.channels.email.headers import normalize_subject
from shared.db.models import Conversation, ConversationStatus, Message
from shared.events import Channel, MessageReceived, ThreadingRule

SUBJECT_CANDIDATES_LIMIT: Final = 20


@dataclass(frozen=True)
class ThreadCandidate:
    conversation_id: uuid.UUID
    status: str
    last_message_at: datetime
    subject: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status != ConversationStatus.RESOLVED.value


@dataclass(frozen=True)
class ThreadDecision:
    rule: ThreadingRule
    conversation_id: uuid.UUID | None
    matched: str | None = None
    previous_conversation_id: uuid.UUID | None = None

    def record(self, conversation_id: uuid.UUID) -> dict[str, Any]:
        """What is stored on the message (``messages.threading``)."""
        return {
            "rule": self.rule.value,
            "matched": self.matched,
            "conversation_id": str(conversation_id),
            "previous_conversation_id": (
                str(self.previous_conversation_id) if self.previous_conversation_id else None
            ),
        }


@dataclass(frozen=True)
class EmailThreadSignals:
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    reply_token: str | None
    subject: str | None


def decide_email_thread(
    signals: EmailThreadSignals,
    *,
    by_message_id: Mapping[str, ThreadCandidate],
    by_reply_token: ThreadCandidate | None,
    same_sender: Sequence[ThreadCandidate],
    same_thread_root: ThreadCandidate | None,
    now: datetime,
    subject_window: timedelta,
) -> ThreadDecision:
    """The conversation for an inbound email (None: open a new one), with the rule."""
    header_match: tuple[ThreadingRule, str, ThreadCandidate] | None = None
    for msg_id in signals.in_reply_to:
        if msg_id in by_message_id:
            header_match = (ThreadingRule.IN_REPLY_TO, msg_id, by_message_id[msg_id])
            break
    if header_match is None:
        for msg_id in reversed(signals.references):
            if msg_id in by_message_id:
                header_match = (ThreadingRule.REFERENCES, msg_id, by_message_id[msg_id])
                break
    if header_match is None and signals.reply_token and by_reply_token is not None:
        header_match = (ThreadingRule.REPLY_TOKEN, signals.reply_token, by_reply_token)

    if header_match is not None:
        rule, matched, candidate = header_match
        if candidate.is_open:
            return ThreadDecision(rule, candidate.conversation_id, matched)
        if same_thread_root is not None and same_thread_root.is_open:
            return ThreadDecision(
                ThreadingRule.THREAD_KEY,
                same_thread_root.conversation_id,
                matched,
                previous_conversation_id=candidate.conversation_id,
            )
        return ThreadDecision(
            ThreadingRule.NEW_CONVERSATION,
            None,
            matched,
            previous_conversation_id=candidate.conversation_id,
        )

    subject_key = normalize_subject(signals.subject)
    if subject_key:
        recent = [
            c
            for c in same_sender
            if c.is_open
            and now - c.last_message_at <= subject_window
            and normalize_subject(c.subject) == subject_key
        ]
        if recent:
            newest = max(recent, key=lambda c: c.last_message_at)
            return ThreadDecision(ThreadingRule.SUBJECT, newest.conversation_id, subject_key)

    if same_thread_root is not None and same_thread_root.is_open:
        return ThreadDecision(ThreadingRule.THREAD_KEY, same_thread_root.conversation_id)
    return ThreadDecision(ThreadingRule.NEW_CONVERSATION, None)


def _candidate(conversation: Conversation) -> ThreadCandidate:
    moment = conversation.last_message_at
    return ThreadCandidate(
        conversation_id=conversation.id,
        status=conversation.status,
        # SQLite hands back naive datetimes; every timestamp we store is UTC.
        last_message_at=moment if moment.tzinfo else moment.replace(tzinfo=UTC),
        subject=conversation.subject,
    )


async def find_email_thread(
    session: AsyncSession,
    inbound: MessageReceived,
    *,
    contact_id: uuid.UUID,
    now: datetime,
    subject_window: timedelta,
) -> ThreadDecision:
    """Gather the candidates for ``decide_email_thread`` (all in the inbound's workspace)."""
    details = inbound.email
    signals = EmailThreadSignals(
        in_reply_to=details.in_reply_to if details else (),
        references=details.references if details else (),
        reply_token=details.reply_token if details else None,
        subject=inbound.subject,
    )
    workspace_id = inbound.workspace_id
    ids = {*signals.in_reply_to, *signals.references}
    by_message_id: dict[str, ThreadCandidate] = {}
    if ids:
        rows = await session.execute(
            select(Message.email_message_id, Conversation)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(
                Message.workspace_id == workspace_id,
                Message.channel == Channel.EMAIL.value,
                Message.email_message_id.in_(sorted(ids)),
            )
        )
        for msg_id, conversation in rows:
            if msg_id is not None:
                by_message_id.setdefault(msg_id, _candidate(conversation))
    by_reply_token = None
    if signals.reply_token:
        token_conversation = await session.scalar(
            select(Conversation).where(
                Conversation.workspace_id == workspace_id,
                Conversation.channel == Channel.EMAIL.value,
                Conversation.reply_token == signals.reply_token,
            )
        )
        by_reply_token = _candidate(token_conversation) if token_conversation else None
    same_sender = [
        _candidate(c)
        for c in await session.scalars(
            select(Conversation)
            .where(
                Conversation.workspace_id == workspace_id,
                Conversation.channel == Channel.EMAIL.value,
                Conversation.contact_id == contact_id,
                Conversation.status != ConversationStatus.RESOLVED.value,
                Conversation.last_message_at >= now - subject_window,
            )
            .order_by(Conversation.last_message_at.desc())
            .limit(SUBJECT_CANDIDATES_LIMIT)
        )
    ]
    root = await session.scalar(
        select(Conversation).where(
            Conversation.workspace_id == workspace_id,
            Conversation.channel == Channel.EMAIL.value,
            Conversation.thread_key == inbound.thread_key,
            Conversation.status != ConversationStatus.RESOLVED.value,
        )
    )
    return decide_email_thread(
        signals,
        by_message_id=by_message_id,
        by_reply_token=by_reply_token,
        same_sender=same_sender,
        same_thread_root=_candidate(root) if root else None,
        now=now,
        subject_window=subject_window,
    )
