"""A 1-5 reply to an open survey is its score, on SQLite and the in-process bus (the dev
mode's stack): not routed, stored on the resolved conversation, the customer thanked."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from services.router.worker import InboundRouter
from shared.bus.memory import MemoryBus
from shared.csat import CsatSettings, link_key, send_survey
from shared.db.models import Conversation, CsatSettingsRow, CsatSurvey, Message
from shared.db.session import Database
from shared.events import CsatRecorded, OutboundMessageRequested, Topic, decode_event
from shared.routing.engine import RoutingContext, resolve
from shared.routing.policy import DEFAULT_POLICY
from tests.unit.test_router import as_record, inbound


async def conversations(database: Database, workspace_id: uuid.UUID) -> list[Conversation]:
    async with database.sessions() as session:
        return list(
            await session.scalars(
                select(Conversation)
                .where(Conversation.workspace_id == workspace_id)
                .order_by(Conversation.created_at)
            )
        )


async def test_a_reply_score_answers_the_survey_once(
    database: Database, memory_bus: MemoryBus, workspace_id: uuid.UUID
) -> None:
    router = InboundRouter(database, memory_bus)
    await router.handle([as_record(inbound(workspace_id, "wcs_k", "wcs_k:1", "My order?"))])
    [conversation] = await conversations(database, workspace_id)
    async with database.sessions() as session:
        session.add(
            CsatSettingsRow(
                workspace_id=workspace_id,
                document=CsatSettings(enabled=True, link=False).model_dump(mode="json"),
            )
        )
        row = await session.get(Conversation, conversation.id)
        assert row is not None
        await resolve(
            RoutingContext(session=session, policy=DEFAULT_POLICY, source="test"),
            row,
            outcome_code=None,
            by_agent_id=None,
        )
        outcome = await send_survey(
            session,
            row,
            link_key_bytes=link_key("secret-for-tests-0000000000000000"),
            default_link_base_url=None,
            source="test",
        )
        await session.commit()
    assert outcome.survey is not None
    assert outcome.survey.accepts_reply

    # Words are a new message, routed as ever; the survey stays open.
    await router.handle([as_record(inbound(workspace_id, "wcs_k", "wcs_k:2", "thanks a lot"))])
    assert len(await conversations(database, workspace_id)) == 2
    async with database.sessions() as session:
        second = await session.scalar(
            select(Conversation).where(
                Conversation.workspace_id == workspace_id, Conversation.status != "resolved"
            )
        )
        assert second is not None
        second.status = "resolved"  # the customer's second question is answered too
        await session.commit()

    await router.handle([as_record(inbound(workspace_id, "wcs_k", "wcs_k:3", " 4 "))])
    assert len(await conversations(database, workspace_id)) == 2
    async with database.sessions() as session:
        survey = await session.get(CsatSurvey, outcome.survey.id)
        stored = await session.scalar(
            select(Message).where(Message.provider_message_id == "wcs_k:3")
        )
    assert survey is not None
    assert (survey.score, survey.answered_via) == (4, "reply")
    assert stored is not None
    assert stored.conversation_id == conversation.id
    assert stored.threading is not None
    assert stored.threading["rule"] == "csat_reply"
    events = [decode_event(r).data for r in memory_bus.records(Topic.EVENTS.value)]
    assert [e.score for e in events if isinstance(e, CsatRecorded)] == [4]
    outbound = [decode_event(r).data for r in memory_bus.records(Topic.OUTBOUND.value)]
    texts = [o.text for o in outbound if isinstance(o, OutboundMessageRequested)]
    assert texts[-1] == "Thank you for your feedback!"

    # Answered: another digit is just a message again (a new conversation).
    await router.handle([as_record(inbound(workspace_id, "wcs_k", "wcs_k:4", "5"))])
    assert len(await conversations(database, workspace_id)) == 3
    async with database.sessions() as session:
        answered = await session.scalar(
            select(func.count()).select_from(CsatSurvey).where(CsatSurvey.score.is_not(None))
        )
    assert answered == 1
