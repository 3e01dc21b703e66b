"""The Alembic migration on PostgreSQL: the constraints that carry the guarantees."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from devmode.seed import seed_demo
from shared.db.models import (
    Agent,
    Assignment,
    Contact,
    Conversation,
    Message,
)
from shared.db.session import Database

pytestmark = pytest.mark.integration


async def conversation_with_agent(database: Database) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    workspace_id = await seed_demo(database, slug=f"schema-{uuid.uuid4().hex[:8]}")
    async with database.sessions() as session:
        agent_id = await session.scalar(select(Agent.id).where(Agent.workspace_id == workspace_id))
        assert agent_id is not None
        contact = Contact(id=uuid.uuid4(), workspace_id=workspace_id)
        session.add(contact)
        await session.flush()
        conversation = Conversation(
            id=uuid.uuid4(),
            workspace_id=workspace_id,
            contact_id=contact.id,
            channel="webchat",
            thread_key=f"wcs_{uuid.uuid4().hex}",
        )
        session.add(conversation)
        await session.commit()
    return workspace_id, conversation.id, agent_id


async def test_a_conversation_can_have_only_one_open_assignment(pg_database: Database) -> None:
    workspace_id, conversation_id, agent_id = await conversation_with_agent(pg_database)

    def assignment() -> Assignment:
        return Assignment(
            workspace_id=workspace_id,
            conversation_id=conversation_id,
            agent_id=agent_id,
            reason="test",
            explanation={},
            load_units=1.0,
        )

    async with pg_database.sessions() as session:
        session.add(assignment())
        await session.commit()
    async with pg_database.sessions() as session:
        session.add(assignment())
        with pytest.raises(IntegrityError, match="uq_assignments_one_open_per_conversation"):
            await session.commit()


async def test_a_provider_message_id_is_stored_once(pg_database: Database) -> None:
    workspace_id, conversation_id, _ = await conversation_with_agent(pg_database)

    def message() -> Message:
        return Message(
            workspace_id=workspace_id,
            conversation_id=conversation_id,
            channel="webchat",
            direction="inbound",
            provider_message_id="same-id",
            text="hi",
        )

    async with pg_database.sessions() as session:
        session.add(message())
        await session.commit()
    async with pg_database.sessions() as session:
        session.add(message())
        with pytest.raises(IntegrityError, match="uq_messages_provider_id"):
            await session.commit()


async def test_an_agent_load_cannot_exceed_capacity(pg_database: Database) -> None:
    _, _, agent_id = await conversation_with_agent(pg_database)
    async with pg_database.sessions() as session:
        agent = await session.get(Agent, agent_id)
        assert agent is not None
        agent.load_units = agent.capacity_units + 1
        with pytest.raises(IntegrityError, match="load_within_capacity"):
            await session.commit()


async def test_routing_explanations_are_stored_lz4_compressed(pg_database: Database) -> None:
    workspace_id, conversation_id, agent_id = await conversation_with_agent(pg_database)
    candidates = [{"agent_id": str(uuid.uuid4()), "load_share": 0.2} for _ in range(500)]
    async with pg_database.sessions() as session:
        assignment = Assignment(
            workspace_id=workspace_id,
            conversation_id=conversation_id,
            agent_id=agent_id,
            reason="test",
            explanation={"rule": "test", "candidates": candidates},
            load_units=1.0,
        )
        session.add(assignment)
        await session.commit()
    async with pg_database.sessions() as session:
        method = await session.scalar(
            select(func.pg_column_compression(Assignment.explanation)).where(
                Assignment.id == assignment.id
            )
        )
        stored = await session.scalar(
            select(Assignment.explanation).where(Assignment.id == assignment.id)
        )
    assert method == "lz4"
    assert stored == {"rule": "test", "candidates": candidates}
