"""Routing one inbound message inside the batch's transaction: thread, store, assign."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.router.contacts import (
    IdentityKey,
    known_identities,
    record_consent,
    resolve_contact,
)
from services.router.snoozed import wake_on_customer_message
from services.router.threading import ThreadDecision, find_email_thread
from shared.bus.consumer import PoisonRecordError
from shared.channels.email.headers import new_reply_token
from shared.conversations import NoCustomerAddressError, send_to_customer
from shared.correlation import correlation_scope, current_correlation_id
from shared.csat import (
    REPLY_CHANNELS,
    SurveyClosedError,
    load_settings,
    pending_reply_survey,
    record_score,
    reply_score,
)
from shared.db.models import (
    ChannelAccount,
    Contact,
    ContactIdentity,
    Conversation,
    ConversationStatus,
    DeliveryStatus,
    Message,
    Workspace,
    utcnow,
)
from shared.events import (
    Channel,
    MessageCreated,
    MessageDirection,
    MessageReceived,
    ThreadingRule,
    Topic,
    conversation_key,
    inbound_key,
)
from shared.metrics import ROUTING_DECISIONS
from shared.outbox import record_event
from shared.routing.business_hours import is_open
from shared.routing.engine import (
    PolicyCache,
    RoutingContext,
    assign_or_queue,
    plan_new_conversation_owners,
    start_sla_clock,
    team_id_named,
    tell_customer,
)
from shared.routing.intake import decide_intake
from shared.settings import get_settings

EVENT_SOURCE = "omniroute/router"


@dataclass
class BatchLookups:
    """What a batch's messages would each ask the database, asked once for the batch:
    which workspaces exist and which messages are stored already (kept current as the
    batch stores messages, so a duplicate inside the batch is still one message)."""

    workspaces: set[uuid.UUID]
    stored: dict[tuple[uuid.UUID, str, str], uuid.UUID]
    identities: dict[IdentityKey, ContactIdentity] = field(default_factory=dict)
    # Open conversation per (workspace, channel, thread key) of the batch's non-email
    # messages; None: no open conversation (yet).
    threads: dict[tuple[uuid.UUID, str, str], Conversation | None] = field(default_factory=dict)
    # Strong references: the session keeps loaded objects only while something does.
    contacts: list[Contact] = field(default_factory=list)
    # New conversations stored by the batch whose owners are still to be chosen (all
    # together, see :func:`settle_new_conversations`).
    new_conversations: list[NewConversation] = field(default_factory=list)


@dataclass(frozen=True)
class NewConversation:
    """A conversation opened by the batch, with what its settling records after the
    owner: the message's event and, outside business hours, the hours notice."""

    ctx: RoutingContext
    conversation: Conversation
    contact: Contact
    message: Message
    inbound: MessageReceived
    off_hours_notice: str | None
    correlation_id: str | None  # the message's, for the events recorded when settled


# The batch lookups' statements, built once: building an ``IN`` clause from the values
# (coercing each one) cost more CPU than anything else in a small batch. Expanding
# parameters take the values at execution; each list length is one prepared statement.
_WORKSPACES_FOUND = select(Workspace.id).where(
    Workspace.id.in_(bindparam("workspace_ids", expanding=True))
)
_STORED_MESSAGES = select(
    Message.workspace_id, Message.channel, Message.provider_message_id, Message.id
).where(
    # All three columns of the (workspace_id, channel, provider_message_id) unique
    # index: without the channel it narrows only to the workspace, and every message
    # the workspace ever stored is read per batch.
    Message.workspace_id.in_(bindparam("workspace_ids", expanding=True)),
    Message.channel.in_(bindparam("channels", expanding=True)),
    Message.provider_message_id.in_(bindparam("provider_ids", expanding=True)),
)
_OPEN_THREADS = select(Conversation).where(
    Conversation.workspace_id.in_(bindparam("workspace_ids", expanding=True)),
    Conversation.channel.in_(bindparam("channels", expanding=True)),
    Conversation.thread_key.in_(bindparam("thread_keys", expanding=True)),
    Conversation.status != ConversationStatus.RESOLVED.value,
)


async def batch_lookups(
    session: AsyncSession,
    batch: Sequence[MessageReceived],
    *,
    known_workspaces: set[uuid.UUID] | None = None,
) -> BatchLookups:
    """Four queries for the whole batch instead of several per message: workspaces,
    stored duplicates, the senders' identities and contacts, the open threads.

    ``known_workspaces``: workspaces already found by earlier batches (workspaces are
    never deleted); only the others are looked up, and those found are added."""
    workspace_ids = {inbound.workspace_id for inbound in batch}
    provider_ids = {inbound.provider_message_id for inbound in batch}
    known = known_workspaces if known_workspaces is not None else set()
    workspaces = workspace_ids & known
    if unknown := workspace_ids - known:
        found = set(await session.scalars(_WORKSPACES_FOUND, {"workspace_ids": list(unknown)}))
        known |= found
        workspaces |= found
    rows = await session.execute(
        _STORED_MESSAGES,
        {
            "workspace_ids": list(workspace_ids),
            "channels": list({inbound.channel.value for inbound in batch}),
            "provider_ids": list(provider_ids),
        },
    )
    stored = {
        (workspace_id, channel, provider_id): message_id
        for workspace_id, channel, provider_id, message_id in rows
        if provider_id is not None
    }
    thread_keys = {
        (inbound.workspace_id, inbound.channel.value, inbound.thread_key)
        for inbound in batch
        if inbound.channel is not Channel.EMAIL
    }
    threads: dict[tuple[uuid.UUID, str, str], Conversation | None] = dict.fromkeys(thread_keys)
    if thread_keys:
        for conversation in await session.scalars(
            _OPEN_THREADS,
            {
                "workspace_ids": list({w for w, _, _ in thread_keys}),
                "channels": list({c for _, c, _ in thread_keys}),
                "thread_keys": list({t for _, _, t in thread_keys}),
            },
        ):
            key = (conversation.workspace_id, conversation.channel, conversation.thread_key)
            if key in threads:
                threads[key] = conversation
    identities, contacts = await known_identities(session, batch)
    return BatchLookups(workspaces, stored, identities, threads, contacts)


@dataclass(frozen=True)
class RoutingOutcome:
    conversation_id: uuid.UUID | None
    message_id: uuid.UUID | None
    duplicate: bool = False
    # With batch lookups a new conversation's owner is chosen when the batch's new
    # conversations are settled, so it is not known here yet (None).
    assigned_agent_id: uuid.UUID | None = None


def _opens_a_conversation_alone(inbound: MessageReceived, lookups: BatchLookups) -> bool:
    """Whether ``inbound`` can join the batch's unsettled new conversations: it opens a
    new conversation of its own (its thread has no open conversation, not even one
    opened earlier in this batch) and reads nothing their settling would change.
    Anything else settles them first, so it sees them as if routed one by one."""
    if inbound.channel is Channel.EMAIL or inbound.consent is not None:
        return False
    if inbound.channel in REPLY_CHANNELS and reply_score(inbound.text) is not None:
        return False  # may be a survey answer: reads conversations
    thread = (inbound.workspace_id, inbound.channel.value, inbound.thread_key)
    return thread in lookups.threads and lookups.threads[thread] is None


async def settle_new_conversations(session: AsyncSession, lookups: BatchLookups) -> None:
    """Owners (or queue places) for the batch's new conversations, chosen and reserved
    together per workspace (``plan_new_conversation_owners``); then, conversation by
    conversation in the order the messages came, the assignment or queue event, the
    message's event and any hours notice, as routing them one by one would have."""
    pending, lookups.new_conversations = lookups.new_conversations, []
    if not pending:
        return
    groups: dict[uuid.UUID, list[NewConversation]] = {}
    for new in pending:
        groups.setdefault(new.conversation.workspace_id, []).append(new)
    owners = {
        workspace_id: await plan_new_conversation_owners(
            group[0].ctx, [new.conversation for new in group], reason="new_conversation"
        )
        for workspace_id, group in groups.items()
    }
    for new in pending:
        with (
            correlation_scope(new.correlation_id)
            if new.correlation_id is not None
            else contextlib.nullcontext()
        ):
            await owners[new.conversation.workspace_id].settle(
                new.conversation, contact=new.contact
            )
            _record_message_created(session, new.inbound, new.conversation, new.message)
            if new.off_hours_notice is not None:
                await tell_customer(new.ctx, new.conversation, new.off_hours_notice, flush=False)


async def route_inbound(
    session: AsyncSession,
    inbound: MessageReceived,
    policies: PolicyCache,
    *,
    subject_window: timedelta | None = None,
    lookups: BatchLookups | None = None,
) -> RoutingOutcome:
    """Store ``inbound`` once, in its conversation; a new conversation gets an owner or
    a place in the queue, its intake decision and its first-response clock.

    The conversation is the thread's: for email by headers, reply token or subject
    (``services.router.threading``), otherwise by the channel's thread key. The
    decision is recorded on the message. ``lookups`` (from :func:`batch_lookups`) answer
    the workspace and duplicate checks without a query per message."""
    stored_key = (inbound.workspace_id, inbound.channel.value, inbound.provider_message_id)
    if lookups is not None:
        workspace_exists = inbound.workspace_id in lookups.workspaces
        existing = lookups.stored.get(stored_key)
    else:
        workspace_exists = (
            await session.scalar(select(Workspace.id).where(Workspace.id == inbound.workspace_id))
            is not None
        )
        existing = await session.scalar(
            select(Message.id).where(
                Message.workspace_id == inbound.workspace_id,
                Message.channel == inbound.channel.value,
                Message.provider_message_id == inbound.provider_message_id,
            )
        )
    if not workspace_exists:
        raise PoisonRecordError(f"unknown workspace {inbound.workspace_id}")
    if existing is not None:
        ROUTING_DECISIONS.labels(outcome="duplicate").inc()
        return RoutingOutcome(conversation_id=None, message_id=existing, duplicate=True)
    if (
        lookups is not None
        and lookups.new_conversations
        and not _opens_a_conversation_alone(inbound, lookups)
    ):
        await settle_new_conversations(session, lookups)

    policy = await policies.get(session, inbound.workspace_id)
    ctx = RoutingContext(session=session, policy=policy, source=EVENT_SOURCE)
    contact = await resolve_contact(
        session, inbound, known_in_batch=lookups.identities if lookups is not None else None
    )
    now = utcnow()
    if inbound.consent is not None:
        await record_consent(session, inbound, now=now)
    elif inbound.channel in REPLY_CHANNELS:
        answered = await _answer_survey(session, inbound, now=now)
        if answered is not None:
            return answered
    decision = await _thread(
        session, inbound, contact, now=now, subject_window=subject_window, lookups=lookups
    )
    conversation = (
        await session.get(Conversation, decision.conversation_id)
        if decision.conversation_id is not None
        else None
    )
    is_new = conversation is None
    if conversation is None:
        conversation = await _open_conversation(ctx, inbound, contact)
    conversation.last_message_at = now

    message = Message(
        id=uuid.uuid4(),
        workspace_id=inbound.workspace_id,
        conversation_id=conversation.id,
        channel=inbound.channel.value,
        direction=MessageDirection.INBOUND.value,
        provider_message_id=inbound.provider_message_id,
        text=inbound.text,
        delivery_status=DeliveryStatus.RECEIVED.value,
        created_at=now,
        subject=inbound.subject,
        threading=decision.record(conversation.id),
        attachments=[a.model_dump(mode="json") for a in inbound.attachments] or None,
        **_email_columns(inbound),
    )
    session.add(message)
    if lookups is None:
        await session.flush()
    # else: written at the next flush, which is the batch's (one round trip for many
    # rows) or, for a new conversation, the autoflush of the assignment's first query.
    if lookups is not None:
        lookups.stored[stored_key] = message.id
        if inbound.channel is not Channel.EMAIL:
            thread = (inbound.workspace_id, inbound.channel.value, inbound.thread_key)
            lookups.threads[thread] = conversation

    hours = policy.business_hours
    off_hours_notice = (
        hours.off_hours_message.format(hours=hours.describe())
        if is_new and hours is not None and not is_open(hours, now)
        else None
    )
    if is_new:
        await start_sla_clock(ctx, conversation, new=True)
        if lookups is not None:
            # The owner is chosen with the batch's other new conversations (one read
            # of the agents, one reservation statement, one flush for all their rows).
            lookups.new_conversations.append(
                NewConversation(
                    ctx,
                    conversation,
                    contact,
                    message,
                    inbound,
                    off_hours_notice,
                    current_correlation_id(),
                )
            )
            return RoutingOutcome(conversation_id=conversation.id, message_id=message.id)
        await assign_or_queue(ctx, conversation, reason="new_conversation")
    elif conversation.status == ConversationStatus.SNOOZED.value:
        await wake_on_customer_message(ctx, conversation)

    _record_message_created(session, inbound, conversation, message)
    if off_hours_notice is not None:
        await tell_customer(ctx, conversation, off_hours_notice)
    return RoutingOutcome(
        conversation_id=conversation.id,
        message_id=message.id,
        assigned_agent_id=conversation.assignee_agent_id,
    )


def _record_message_created(
    session: AsyncSession, inbound: MessageReceived, conversation: Conversation, message: Message
) -> None:
    record_event(
        session,
        MessageCreated(
            workspace_id=inbound.workspace_id,
            conversation_id=conversation.id,
            message_id=message.id,
            channel=inbound.channel,
            direction=MessageDirection.INBOUND,
            text=message.text,
            assignee_agent_id=conversation.assignee_agent_id,
            created_at=message.created_at,
            received_at=inbound.received_at,
            subject=inbound.subject,
            attachments=inbound.attachments,
        ),
        topic=Topic.EVENTS,
        key=conversation_key(inbound.workspace_id, conversation.id),
        source=EVENT_SOURCE,
        subject=str(conversation.id),
    )
    if inbound.channel is Channel.SMS and any(a.at_provider for a in inbound.attachments):
        # For ingest's media fetcher, through the outbox: sent once the message is
        # stored (so the stored media always find it), and never lost once it is.
        record_event(
            session,
            inbound,
            topic=Topic.MEDIA,
            key=inbound_key(inbound.workspace_id, inbound.channel, inbound.sender.address),
            source=EVENT_SOURCE,
            subject=inbound.thread_key,
        )


async def _open_conversation(
    ctx: RoutingContext, inbound: MessageReceived, contact: Contact
) -> Conversation:
    decision = decide_intake(
        ctx.policy.intake_rules, text=inbound.text, vip=contact.vip, channel=inbound.channel
    )
    team_id = (
        await team_id_named(ctx.session, inbound.workspace_id, decision.team)
        if decision.team
        else None
    )
    now = utcnow()
    conversation = Conversation(
        id=uuid.uuid4(),
        workspace_id=inbound.workspace_id,
        contact_id=contact.id,
        channel=inbound.channel.value,
        thread_key=inbound.thread_key,
        channel_account_id=await _known_account(ctx.session, inbound),
        customer_address=inbound.sender.address,
        subject=inbound.subject,
        reply_token=new_reply_token() if inbound.channel is Channel.EMAIL else None,
        status=ConversationStatus.QUEUED.value,
        tier=decision.tier,
        priority=decision.priority,
        team_id=team_id,
        required_skills=sorted(decision.skills),
        language=inbound.language,
        intake={
            "matched_rules": list(decision.matched_rules),
            "sentiment": decision.sentiment,
            "team": decision.team,
            "team_found": team_id is not None if decision.team else None,
        },
        created_at=now,
        last_message_at=now,
    )
    ctx.session.add(conversation)
    # Not flushed here: inserted with its first message (and its clock) when the
    # assignment's first query autoflushes, with those values in the INSERT instead of
    # UPDATEs right after it.
    return conversation


async def _thread(
    session: AsyncSession,
    inbound: MessageReceived,
    contact: Contact,
    *,
    now: datetime,
    subject_window: timedelta | None,
    lookups: BatchLookups | None = None,
) -> ThreadDecision:
    if inbound.channel is Channel.EMAIL:
        window = (
            subject_window
            if subject_window is not None
            else timedelta(days=get_settings().email_subject_thread_days)
        )
        return await find_email_thread(
            session, inbound, contact_id=contact.id, now=now, subject_window=window
        )
    thread = (inbound.workspace_id, inbound.channel.value, inbound.thread_key)
    if lookups is not None and thread in lookups.threads:
        known = lookups.threads[thread]
        if known is None:
            return ThreadDecision(ThreadingRule.NEW_CONVERSATION, None)
        return ThreadDecision(ThreadingRule.THREAD_KEY, known.id, inbound.thread_key)
    # The entity, not just its id: the caller's ``session.get`` then needs no query.
    open_thread = await session.scalar(
        select(Conversation).where(
            Conversation.workspace_id == inbound.workspace_id,
            Conversation.channel == inbound.channel.value,
            Conversation.thread_key == inbound.thread_key,
            Conversation.status != ConversationStatus.RESOLVED.value,
        )
    )
    if open_thread is None:
        return ThreadDecision(ThreadingRule.NEW_CONVERSATION, None)
    return ThreadDecision(ThreadingRule.THREAD_KEY, open_thread.id, inbound.thread_key)


def _email_columns(inbound: MessageReceived) -> dict[str, Any]:
    details = inbound.email
    if details is None:
        return {}
    return {
        "email_message_id": details.message_id,
        "original_text": details.original_text or None,
        "channel_data": {
            "in_reply_to": list(details.in_reply_to),
            "references": list(details.references),
            "recipient": details.recipient,
            "reply_token": details.reply_token,
            "to": list(details.to),
            "cc": list(details.cc),
            "raw_storage_key": details.raw_storage_key,
            "auto_submitted": details.auto_submitted,
        },
    }


async def _known_account(session: AsyncSession, inbound: MessageReceived) -> uuid.UUID | None:
    """The inbound's channel account, if it exists in its workspace (else none)."""
    if inbound.channel_account_id is None:
        return None
    found: uuid.UUID | None = await session.scalar(
        select(ChannelAccount.id).where(
            ChannelAccount.id == inbound.channel_account_id,
            ChannelAccount.workspace_id == inbound.workspace_id,
        )
    )
    return found


async def _answer_survey(
    session: AsyncSession, inbound: MessageReceived, *, now: datetime
) -> RoutingOutcome | None:
    """A reply that is only a digit 1-5, on a thread whose conversation is resolved and
    has an open survey, is the survey's score: stored on that conversation, not routed."""
    score = reply_score(inbound.text)
    if score is None:
        return None
    open_thread = await session.scalar(
        select(Conversation.id).where(
            Conversation.workspace_id == inbound.workspace_id,
            Conversation.channel == inbound.channel.value,
            Conversation.thread_key == inbound.thread_key,
            Conversation.status != ConversationStatus.RESOLVED.value,
        )
    )
    if open_thread is not None:
        return None
    survey = await pending_reply_survey(
        session, inbound.workspace_id, inbound.channel, inbound.thread_key
    )
    if survey is None:
        return None
    try:
        await record_score(session, survey, score, via="reply", source=EVENT_SOURCE)
    except SurveyClosedError:
        return None
    conversation = await session.get(Conversation, survey.conversation_id)
    if conversation is None:  # the survey's foreign key makes this impossible
        raise PoisonRecordError(f"survey {survey.id} without its conversation")
    message = Message(
        id=uuid.uuid4(),
        workspace_id=inbound.workspace_id,
        conversation_id=conversation.id,
        channel=inbound.channel.value,
        direction=MessageDirection.INBOUND.value,
        provider_message_id=inbound.provider_message_id,
        text=inbound.text,
        delivery_status=DeliveryStatus.RECEIVED.value,
        created_at=now,
        threading={
            "rule": "csat_reply",
            "matched": inbound.thread_key,
            "conversation_id": str(conversation.id),
            "survey_id": str(survey.id),
            "score": score,
        },
    )
    session.add(message)
    await session.flush()
    record_event(
        session,
        MessageCreated(
            workspace_id=inbound.workspace_id,
            conversation_id=conversation.id,
            message_id=message.id,
            channel=inbound.channel,
            direction=MessageDirection.INBOUND,
            text=message.text,
            assignee_agent_id=conversation.assignee_agent_id,
            created_at=now,
            received_at=inbound.received_at,
        ),
        topic=Topic.EVENTS,
        key=conversation_key(inbound.workspace_id, conversation.id),
        source=EVENT_SOURCE,
        subject=str(conversation.id),
    )
    thanks = (await load_settings(session, inbound.workspace_id)).thank_you
    if thanks:
        try:
            await send_to_customer(session, conversation, thanks, source=EVENT_SOURCE)
        except NoCustomerAddressError:
            pass  # the score is recorded; there is just nobody to thank on this channel
    ROUTING_DECISIONS.labels(outcome="csat_reply").inc()
    return RoutingOutcome(conversation_id=conversation.id, message_id=message.id)
