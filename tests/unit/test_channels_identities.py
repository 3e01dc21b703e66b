"""One customer across channels: identities by kind resolve to one contact, and the
customer's previous agent (sticky owner) follows them from web chat to email."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select, update

from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.bus.port import BusRecord
from shared.db.models import Agent, AgentStatus, Assignment, ContactIdentity, Conversation
from shared.db.session import Database
from shared.events import (
    Channel,
    Event,
    IdentityClaim,
    IdentityKind,
    InboundEmail,
    MessageReceived,
    Sender,
    Topic,
    encode_event,
    inbound_key,
)


def chat(workspace_id: uuid.UUID, session: str, *, email: str | None = None) -> MessageReceived:
    claims = (IdentityClaim(kind=IdentityKind.EMAIL, address=email),) if email else ()
    return MessageReceived(
        workspace_id=workspace_id,
        channel=Channel.WEBCHAT,
        provider_message_id=f"{session}:{uuid.uuid4().hex}",
        thread_key=session,
        sender=Sender(address=session, display_name="Grace", identities=claims),
        text="Hi from the chat",
        received_at=datetime.now(UTC),
    )


def mail(workspace_id: uuid.UUID, sender: str, *, subject: str = "Order 1234") -> MessageReceived:
    msg_id = f"<{uuid.uuid4().hex}@example.com>"
    return MessageReceived(
        workspace_id=workspace_id,
        channel=Channel.EMAIL,
        provider_message_id=msg_id,
        thread_key=f"email:{msg_id}",
        sender=Sender(address=sender, display_name="Grace Hopper"),
        text="Hi by email",
        received_at=datetime.now(UTC),
        subject=subject,
        email=InboundEmail(message_id=msg_id, recipient="support@demo.omniroute.dev"),
    )


def record(payload: MessageReceived) -> BusRecord:
    out = encode_event(
        Event.of(payload, source="test"),
        topic=Topic.INBOUND.value,
        key=inbound_key(payload.workspace_id, payload.channel, payload.sender.address),
    )
    return BusRecord(out.topic, 0, 0, out.key, out.value, out.headers)


async def route(database: Database, bus: MemoryBus, payload: MessageReceived) -> Conversation:
    await InboundRouter(database, bus).handle([record(payload)])
    async with database.sessions() as session:
        conversation = await session.scalar(
            select(Conversation).order_by(Conversation.created_at.desc()).limit(1)
        )
    assert conversation is not None
    return conversation


async def identities(database: Database, contact_id: uuid.UUID) -> set[tuple[str, str]]:
    async with database.sessions() as session:
        rows = await session.scalars(
            select(ContactIdentity).where(ContactIdentity.contact_id == contact_id)
        )
        return {(row.kind, row.address) for row in rows}


async def test_a_chat_that_gave_an_email_and_that_email_are_one_contact(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    in_chat = await route(
        database, memory_bus, chat(workspace_id, "wcs_1", email="grace@example.com")
    )
    by_mail = await route(database, memory_bus, mail(workspace_id, "grace@example.com"))
    other = await route(database, memory_bus, mail(workspace_id, "alan@example.com"))

    assert by_mail.contact_id == in_chat.contact_id
    assert by_mail.id != in_chat.id
    assert other.contact_id != in_chat.contact_id
    assert await identities(database, in_chat.contact_id) == {
        ("webchat_session", "wcs_1"),
        ("email", "grace@example.com"),
    }


async def test_an_email_first_then_a_chat_giving_that_email_is_the_same_contact(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    by_mail = await route(database, memory_bus, mail(workspace_id, "grace@example.com"))
    in_chat = await route(
        database, memory_bus, chat(workspace_id, "wcs_2", email="Grace@Example.com")
    )
    later_chat = await route(database, memory_bus, chat(workspace_id, "wcs_3"))

    assert in_chat.contact_id == by_mail.contact_id
    assert later_chat.contact_id != by_mail.contact_id  # an anonymous session is nobody yet


async def test_an_identity_of_another_contact_is_not_taken_over(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    by_mail = await route(database, memory_bus, mail(workspace_id, "grace@example.com"))
    anonymous = await route(database, memory_bus, chat(workspace_id, "wcs_4"))
    # The same session later claims Grace's address: the session's contact stays its own.
    claimed = await route(
        database, memory_bus, chat(workspace_id, "wcs_4", email="grace@example.com")
    )

    assert claimed.contact_id == anonymous.contact_id != by_mail.contact_id
    assert ("email", "grace@example.com") in await identities(database, by_mail.contact_id)
    assert ("email", "grace@example.com") not in await identities(database, anonymous.contact_id)


async def test_the_sticky_owner_follows_the_customer_from_chat_to_email(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    async with database.sessions() as session:
        await session.execute(
            update(Agent)
            .where(Agent.workspace_id == workspace_id)
            .values(status=AgentStatus.OFFLINE.value)
        )
        await session.execute(
            update(Agent)
            .where(Agent.workspace_id == workspace_id, Agent.email.startswith("ada@"))
            .values(status=AgentStatus.ONLINE.value)
        )
        await session.commit()
    in_chat = await route(
        database, memory_bus, chat(workspace_id, "wcs_5", email="grace@example.com")
    )
    async with database.sessions() as session:
        # Ben comes online with nothing to do: least loaded would pick him.
        await session.execute(
            update(Agent)
            .where(Agent.workspace_id == workspace_id, Agent.email.startswith("ben@"))
            .values(status=AgentStatus.ONLINE.value)
        )
        await session.commit()

    by_mail = await route(database, memory_bus, mail(workspace_id, "grace@example.com"))

    assert in_chat.assignee_agent_id is not None
    assert by_mail.assignee_agent_id == in_chat.assignee_agent_id
    async with database.sessions() as session:
        assignment = await session.scalar(
            select(Assignment).where(Assignment.conversation_id == by_mail.id)
        )
    assert assignment is not None
    assert assignment.explanation["rule"] == "sticky_owner"
