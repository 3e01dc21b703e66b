"""Email threading: the pure decision, and the router on SQLite with real replies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from services.router.threading import (
    EmailThreadSignals,
    ThreadCandidate,
    decide_email_thread,
)
from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.bus.port import BusRecord
from shared.channels.attachments import MemoryAttachmentStore
from shared.channels.email.inbound import normalize_inbound_email
from shared.channels.email.mime import parse_mime
from shared.channels.protocol import ChannelAccount, ChannelContext, ChannelLimits
from shared.conversations import send_to_customer
from shared.db.models import ChannelAccount as ChannelAccountRow
from shared.db.models import Conversation, ConversationStatus, Message
from shared.db.session import Database
from shared.events import (
    Channel,
    Event,
    MessageReceived,
    OutboundMessageRequested,
    ThreadingRule,
    Topic,
    decode_event,
    encode_event,
    inbound_key,
)
from shared.outbox import commit_and_publish
from tests.unit.test_email_mime import sample_email

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


def candidate(
    status: str = "assigned", *, subject: str | None = None, age_hours: float = 1
) -> ThreadCandidate:
    return ThreadCandidate(
        conversation_id=uuid.uuid4(),
        status=status,
        last_message_at=NOW - timedelta(hours=age_hours),
        subject=subject,
    )


def decide(
    signals: EmailThreadSignals,
    *,
    by_message_id: dict[str, ThreadCandidate] | None = None,
    by_reply_token: ThreadCandidate | None = None,
    same_sender: list[ThreadCandidate] | None = None,
    same_thread_root: ThreadCandidate | None = None,
) -> tuple[ThreadingRule, uuid.UUID | None]:
    decision = decide_email_thread(
        signals,
        by_message_id=by_message_id or {},
        by_reply_token=by_reply_token,
        same_sender=same_sender or [],
        same_thread_root=same_thread_root,
        now=NOW,
        subject_window=WEEK,
    )
    return decision.rule, decision.conversation_id


def signals(
    *,
    in_reply_to: tuple[str, ...] = (),
    references: tuple[str, ...] = (),
    token: str | None = None,
    subject: str | None = "Order 1234",
) -> EmailThreadSignals:
    return EmailThreadSignals(in_reply_to, references, token, subject)


def test_in_reply_to_wins_over_everything_else() -> None:
    parent, referenced, tokened, same_subject = candidate(), candidate(), candidate(), candidate()

    rule, chosen = decide(
        signals(in_reply_to=("<p>",), references=("<r>",), token="tok"),
        by_message_id={"<p>": parent, "<r>": referenced},
        by_reply_token=tokened,
        same_sender=[same_subject],
    )

    assert (rule, chosen) == (ThreadingRule.IN_REPLY_TO, parent.conversation_id)


def test_references_are_tried_newest_first() -> None:
    old, new = candidate(), candidate()

    rule, chosen = decide(
        signals(in_reply_to=("<unknown>",), references=("<r1>", "<r2>", "<r3>")),
        by_message_id={"<r1>": old, "<r2>": new},
    )

    assert (rule, chosen) == (ThreadingRule.REFERENCES, new.conversation_id)


def test_the_reply_token_comes_before_the_subject() -> None:
    tokened, same_subject = candidate(), candidate(subject="Order 1234")

    rule, chosen = decide(signals(token="tok"), by_reply_token=tokened, same_sender=[same_subject])

    assert (rule, chosen) == (ThreadingRule.REPLY_TOKEN, tokened.conversation_id)


def test_the_subject_fallback_needs_same_sender_recent_open_and_same_subject() -> None:
    match = candidate(subject="RE: order 1234", age_hours=2)
    newer_match = candidate(subject="Order 1234", age_hours=1)
    resolved = candidate(ConversationStatus.RESOLVED.value, subject="Order 1234", age_hours=0.5)
    stale = candidate(subject="Order 1234", age_hours=24 * 8)
    other = candidate(subject="Invoice question", age_hours=0.1)

    rule, chosen = decide(
        signals(subject="Re: Order 1234"), same_sender=[match, newer_match, resolved, stale, other]
    )
    new_rule, none = decide(signals(subject="A new question"), same_sender=[match, other])
    only_stale = decide(signals(), same_sender=[stale, resolved])

    assert (rule, chosen) == (ThreadingRule.SUBJECT, newer_match.conversation_id)
    assert (new_rule, none) == (ThreadingRule.NEW_CONVERSATION, None)
    assert only_stale == (ThreadingRule.NEW_CONVERSATION, None)


def test_an_empty_subject_never_matches_by_subject() -> None:
    assert decide(signals(subject=""), same_sender=[candidate(subject="")]) == (
        ThreadingRule.NEW_CONVERSATION,
        None,
    )


def test_a_reply_to_a_resolved_conversation_starts_or_joins_its_follow_up() -> None:
    resolved = candidate(ConversationStatus.RESOLVED.value)
    follow_up = candidate()

    first = decide_email_thread(
        signals(in_reply_to=("<p>",)),
        by_message_id={"<p>": resolved},
        by_reply_token=None,
        same_sender=[],
        same_thread_root=None,
        now=NOW,
        subject_window=WEEK,
    )
    again = decide_email_thread(
        signals(in_reply_to=("<p>",)),
        by_message_id={"<p>": resolved},
        by_reply_token=None,
        same_sender=[],
        same_thread_root=follow_up,
        now=NOW,
        subject_window=WEEK,
    )

    assert first.rule is ThreadingRule.NEW_CONVERSATION
    assert first.conversation_id is None
    assert first.previous_conversation_id == resolved.conversation_id
    assert again.rule is ThreadingRule.THREAD_KEY
    assert again.conversation_id == follow_up.conversation_id
    assert again.record(follow_up.conversation_id)["previous_conversation_id"] == str(
        resolved.conversation_id
    )


# The router on SQLite ------------------------------------------------------------------


async def demo_account(database: Database, workspace_id: uuid.UUID) -> ChannelAccount:
    async with database.sessions() as session:
        row = await session.scalar(
            select(ChannelAccountRow).where(ChannelAccountRow.workspace_id == workspace_id)
        )
    assert row is not None
    return ChannelAccount(
        id=row.id,
        workspace_id=row.workspace_id,
        channel=Channel.EMAIL,
        adapter=row.adapter,
        address=row.address,
    )


async def inbound_email(account: ChannelAccount, raw: bytes) -> MessageReceived:
    ctx = ChannelContext(account=account, attachments=MemoryAttachmentStore())
    return await normalize_inbound_email(parse_mime(raw, limits=ChannelLimits()), ctx, raw=raw)


def as_record(payload: MessageReceived) -> BusRecord:
    out = encode_event(
        Event.of(payload, source="test"),
        topic=Topic.INBOUND.value,
        key=inbound_key(payload.workspace_id, payload.channel, payload.sender.address),
    )
    return BusRecord(out.topic, 0, 0, out.key, out.value, out.headers)


class Mailbox:
    """The customer's side: sends email into the router, reads the replies we queue."""

    def __init__(self, database: Database, bus: MemoryBus, account: ChannelAccount) -> None:
        self.database = database
        self.bus = bus
        self.account = account
        self.router = InboundRouter(database, bus)

    async def send(self, raw: bytes) -> Message:
        payload = await inbound_email(self.account, raw)
        await self.router.handle([as_record(payload)])
        async with self.database.sessions() as session:
            message = await session.scalar(
                select(Message).where(Message.provider_message_id == payload.provider_message_id)
            )
        assert message is not None
        return message

    async def agent_replies(
        self, conversation_id: uuid.UUID, text: str
    ) -> OutboundMessageRequested:
        async with self.database.sessions() as session:
            conversation = await session.get(Conversation, conversation_id)
            assert conversation is not None
            await send_to_customer(session, conversation, text, source="test")
            await commit_and_publish(session, self.bus, self.database.sessions)
        outbound = [
            e.data
            for e in (decode_event(r) for r in self.bus.records(Topic.OUTBOUND.value))
            if isinstance(e.data, OutboundMessageRequested)
        ]
        return outbound[-1]


@pytest.fixture
async def mailbox(database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID) -> Mailbox:
    return Mailbox(database, memory_bus, await demo_account(database, workspace_id))


async def test_a_new_email_opens_a_conversation_that_remembers_the_email(
    mailbox: Mailbox, database: Database
) -> None:
    message = await mailbox.send(sample_email(subject="Order 1234 is late"))

    async with database.sessions() as session:
        conversation = await session.get(Conversation, message.conversation_id)
    assert conversation is not None
    assert conversation.subject == "Order 1234 is late"
    assert conversation.customer_address == "grace@example.com"
    assert conversation.channel_account_id == mailbox.account.id
    assert conversation.reply_token is not None
    assert message.email_message_id == "<c1@example.com>"
    assert message.subject == "Order 1234 is late"
    assert message.threading is not None
    assert message.threading["rule"] == "new_conversation"
    assert message.original_text is not None


async def test_a_reply_chain_stays_in_one_conversation_and_a_new_subject_does_not(
    mailbox: Mailbox,
) -> None:
    first = await mailbox.send(sample_email(message_id="<c1@example.com>"))
    reply = await mailbox.agent_replies(first.conversation_id, "It ships today.")

    assert reply.email is not None
    assert reply.email.from_address == mailbox.account.address
    assert reply.email.subject == "Re: Order 1234 is late"
    assert reply.email.in_reply_to == "<c1@example.com>"
    assert reply.email.references == ("<c1@example.com>",)
    assert reply.email.reply_to is not None
    assert reply.email.reply_to.startswith("support+")
    assert reply.recipient_address == "grace@example.com"

    answer = await mailbox.send(
        sample_email(
            message_id="<c2@example.com>",
            subject="Re: Order 1234 is late",
            in_reply_to=reply.email.message_id,
            references=f"<c1@example.com> {reply.email.message_id}",
        )
    )
    # A mailer that keeps only References still threads (newest first).
    only_references = await mailbox.send(
        sample_email(
            message_id="<c3@example.com>",
            subject="Re: Order 1234 is late",
            references=f"<c1@example.com> {reply.email.message_id} <unknown@x>",
        )
    )
    # A mailer that drops the headers but replies to our Reply-To address.
    by_token = await mailbox.send(
        sample_email(message_id="<c4@example.com>", subject="thanks", to=reply.email.reply_to)
    )
    new_subject = await mailbox.send(
        sample_email(message_id="<c5@example.com>", subject="A different question")
    )

    assert answer.conversation_id == first.conversation_id
    assert answer.threading is not None
    assert answer.threading["rule"] == "in_reply_to"
    assert answer.threading["matched"] == reply.email.message_id
    assert only_references.conversation_id == first.conversation_id
    assert only_references.threading is not None
    assert only_references.threading["rule"] == "references"
    assert by_token.conversation_id == first.conversation_id
    assert by_token.threading is not None
    assert by_token.threading["rule"] == "reply_token"
    assert new_subject.conversation_id != first.conversation_id
    assert new_subject.threading is not None
    assert new_subject.threading["rule"] == "new_conversation"


async def test_the_second_reply_threads_to_the_customers_latest_email(mailbox: Mailbox) -> None:
    first = await mailbox.send(sample_email(message_id="<c1@example.com>"))
    reply = await mailbox.agent_replies(first.conversation_id, "One")
    assert reply.email is not None
    await mailbox.send(
        sample_email(
            message_id="<c2@example.com>",
            in_reply_to=reply.email.message_id,
            references=f"<c1@example.com> {reply.email.message_id}",
        )
    )

    second = await mailbox.agent_replies(first.conversation_id, "Two")

    assert second.email is not None
    assert second.email.in_reply_to == "<c2@example.com>"
    assert second.email.references == (
        "<c1@example.com>",
        reply.email.message_id,
        "<c2@example.com>",
    )
    assert second.email.message_id != reply.email.message_id


async def test_same_subject_without_headers_joins_by_the_subject_fallback(
    mailbox: Mailbox,
) -> None:
    first = await mailbox.send(sample_email(message_id="<c1@example.com>"))

    again = await mailbox.send(
        sample_email(message_id="<c2@example.com>", subject="RE: order 1234 IS LATE")
    )

    assert again.conversation_id == first.conversation_id
    assert again.threading is not None
    assert again.threading["rule"] == "subject"


async def test_a_reply_to_a_resolved_conversation_opens_a_follow_up(
    mailbox: Mailbox, database: Database
) -> None:
    first = await mailbox.send(sample_email(message_id="<c1@example.com>"))
    async with database.sessions() as session:
        await session.execute(
            update(Conversation)
            .where(Conversation.id == first.conversation_id)
            .values(status=ConversationStatus.RESOLVED.value)
        )
        await session.commit()

    late = await mailbox.send(
        sample_email(message_id="<c2@example.com>", in_reply_to="<c1@example.com>")
    )
    later = await mailbox.send(
        sample_email(message_id="<c3@example.com>", in_reply_to="<c1@example.com>")
    )

    assert late.conversation_id != first.conversation_id
    assert late.threading is not None
    assert late.threading["previous_conversation_id"] == str(first.conversation_id)
    assert later.conversation_id == late.conversation_id
    assert later.threading is not None
    assert later.threading["rule"] == "thread_key"


async def test_an_email_delivered_three_times_is_stored_once(
    mailbox: Mailbox, database: Database
) -> None:
    raw = sample_email()
    for _ in range(3):
        await mailbox.send(raw)

    async with database.sessions() as session:
        stored = await session.scalar(select(func.count()).select_from(Message))
        conversations = await session.scalar(select(func.count()).select_from(Conversation))
    assert stored == 1
    assert conversations == 1
