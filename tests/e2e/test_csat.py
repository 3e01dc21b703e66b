"""CSAT end to end on real Kafka and PostgreSQL, services as processes.

SMS: the agent resolves; the survey reaches the customer through Twilio (a local
stand-in of its Messages API) with "reply 1-5" and a signed link; the customer's signed
inbound "1" is the score (no new conversation), a supervisor is pushed a follow-up,
lists it and closes it with a note; the link, used once already, refuses a second answer.

Web chat: the survey appears in the customer's chat; their "5" is the score, they are
thanked, and the rating page of the link says it is answered.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from devmode.seed import DEMO_AGENTS, seed_demo
from shared.csat import CsatSettings
from shared.db.models import Conversation, CsatSettingsRow, CsatSurvey, Message
from shared.db.session import Database
from tests.e2e.processes import ServiceProcess
from tests.e2e.routing_client import agent_online, customer_chat
from tests.e2e.test_channel_sms import (
    inbound_sms,
    phone_number,
    post_signed,
    secret_file,  # noqa: F401 - the fixture
    seed_sms_account,
)
from tests.twilio_stand_in import TwilioCall, TwilioStandIn

pytestmark = pytest.mark.e2e

ADA, SAM = DEMO_AGENTS[0].email, DEMO_AGENTS[3].email
LINK = re.compile(r"(https?://\S+/v1/surveys/([\w-]+\.[\w-]+))")


async def enable_surveys(database: Database, workspace_id: uuid.UUID, api_url: str) -> None:
    settings = CsatSettings(enabled=True, link_base_url=api_url)
    async with database.sessions() as session:
        session.add(
            CsatSettingsRow(workspace_id=workspace_id, document=settings.model_dump(mode="json"))
        )
        await session.commit()


async def twilio_call(
    twilio: TwilioStandIn, to: str, fragment: str, *, within_seconds: float = 30
) -> TwilioCall:
    deadline = asyncio.get_running_loop().time() + within_seconds
    while asyncio.get_running_loop().time() < deadline:
        for call in twilio.recorder.received:
            if (
                isinstance(call, TwilioCall)
                and call.fields.get("To") == to
                and fragment in call.fields.get("Body", "")
            ):
                return call
        await asyncio.sleep(0.05)
    raise AssertionError(f"the Twilio stand-in never sent {fragment!r} to {to}")


def of_type(kind: str, **data: Any) -> Any:
    return lambda f: f["type"] == kind and all(f["data"].get(k) == v for k, v in data.items())


async def test_csat_round_trip_on_sms_with_a_supervisor_follow_up(
    stack: dict[str, ServiceProcess],
    postgres_url: str,
    twilio: TwilioStandIn,
    secret_file: Path,  # noqa: F811
) -> None:
    database = Database(postgres_url)
    workspace = f"csat-sms-{uuid.uuid4().hex[:8]}"
    workspace_id = await seed_demo(database, slug=workspace)
    number, customer = phone_number(), phone_number()
    account_id = await seed_sms_account(database, workspace_id, number, secret_file)
    api_url = stack["agent_api"].base_url
    await enable_surveys(database, workspace_id, api_url)
    inbound_path = f"/v1/channels/twilio/{account_id}"
    try:
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=30) as api,
            httpx.AsyncClient(base_url=stack["ingest"].base_url, timeout=30) as ingest,
            agent_online(api, api_url, workspace, ADA) as ada,
            agent_online(api, api_url, workspace, SAM, status="away") as sam,
        ):
            await post_signed(
                ingest, inbound_path, inbound_sms("SM" + uuid.uuid4().hex, customer, number, "Hi")
            )
            conversation_id = (await ada.assigned())["data"]["conversation_id"]
            resolved = await api.post(
                f"/v1/conversations/{conversation_id}/resolve", json={}, headers=ada.auth
            )
            assert resolved.status_code == 200, resolved.text

            # The survey reaches the customer from our number: reply 1-5, or the link.
            survey_sms = await twilio_call(twilio, customer, "Reply with a number from 1 to 5")
            assert survey_sms.fields["From"] == number
            link = LINK.search(survey_sms.fields["Body"])
            assert link is not None, survey_sms.fields["Body"]
            assert link.group(1).startswith(api_url)

            # "1" answers the survey: recorded, the owner and supervisors are told, the
            # supervisor gets a follow-up, the customer is thanked; nothing is routed.
            await post_signed(
                ingest, inbound_path, inbound_sms("SM" + uuid.uuid4().hex, customer, number, "1")
            )
            opened = await sam.socket.wait_for(
                of_type("csat.follow_up_opened", conversation_id=conversation_id, score=1),
                what="csat.follow_up_opened",
            )
            recorded = await ada.socket.wait_for(
                of_type("csat.recorded", conversation_id=conversation_id),
                what="csat.recorded at the owner",
            )
            assert recorded["data"]["score"] == 1
            assert recorded["data"]["answered_via"] == "reply"
            assert recorded["data"]["agent_id"] == opened["data"]["agent_id"] is not None
            await twilio_call(twilio, customer, "Thank you for your feedback!")

            listed = await api.get("/v1/csat/follow-ups", headers=sam.auth)
            assert listed.status_code == 200, listed.text
            [follow_up] = listed.json()["items"]
            assert follow_up["id"] == opened["data"]["follow_up_id"]
            assert (follow_up["score"], follow_up["closed_at"]) == (1, None)
            assert (await api.get("/v1/csat/follow-ups", headers=ada.auth)).status_code == 403

            closed = await api.post(
                f"/v1/csat/follow-ups/{follow_up['id']}/close",
                json={"note": "Called the customer; refund issued."},
                headers=sam.auth,
            )
            assert closed.status_code == 200, closed.text
            assert closed.json()["note"] == "Called the customer; refund issued."
            await sam.socket.wait_for(
                of_type("csat.follow_up_closed", follow_up_id=follow_up["id"]),
                what="csat.follow_up_closed",
            )
            still_open = await api.get("/v1/csat/follow-ups", headers=sam.auth)
            assert still_open.json()["items"] == []

            # The survey is answered: its link refuses a second score.
            again = await api.post(f"/v1/surveys/{link.group(2)}", json={"score": 5})
            assert again.status_code == 409, again.text

            report = await api.get("/v1/analytics/csat", headers=sam.auth)
            assert report.status_code == 200, report.text
            body = report.json()
            assert (body["count"], body["average"]) == (1, 1.0)
            assert body["distribution"] == {"1": 1, "2": 0, "3": 0, "4": 0, "5": 0}
            assert [g["key"] for g in body["by_channel"]] == ["sms"]

        async with database.sessions() as session:
            conversations = await session.scalar(
                select(func.count())
                .select_from(Conversation)
                .where(Conversation.workspace_id == workspace_id)
            )
            conversation = await session.get(Conversation, uuid.UUID(conversation_id))
            score_message = await session.scalar(
                select(Message).where(
                    Message.conversation_id == uuid.UUID(conversation_id), Message.text == "1"
                )
            )
            survey = await session.scalar(
                select(CsatSurvey).where(CsatSurvey.workspace_id == workspace_id)
            )
        assert conversations == 1  # the "1" did not open a conversation
        assert conversation is not None
        assert conversation.status == "resolved"
        assert score_message is not None
        assert score_message.direction == "inbound"
        assert survey is not None
        assert (survey.score, survey.answered_via, survey.channel) == (1, "reply", "sms")
    except Exception:
        for service in stack.values():
            print(f"--- {service.name} ---\n{service.log_tail()}")  # noqa: T201
        raise
    finally:
        await database.dispose()


async def test_csat_round_trip_in_web_chat(
    stack: dict[str, ServiceProcess], postgres_url: str
) -> None:
    database = Database(postgres_url)
    workspace = f"csat-chat-{uuid.uuid4().hex[:8]}"
    workspace_id = await seed_demo(database, slug=workspace)
    api_url, ingest_url = stack["agent_api"].base_url, stack["ingest"].base_url
    await enable_surveys(database, workspace_id, api_url)
    try:
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=30) as api,
            httpx.AsyncClient(base_url=ingest_url, timeout=30) as ingest,
            agent_online(api, api_url, workspace, ADA) as ada,
            customer_chat(ingest, ingest_url, workspace) as customer,
        ):
            await customer.write("My parcel is late.")
            conversation_id = (await ada.assigned())["data"]["conversation_id"]
            resolved = await api.post(
                f"/v1/conversations/{conversation_id}/resolve", json={}, headers=ada.auth
            )
            assert resolved.status_code == 200, resolved.text

            survey = await customer.told("Reply with a number from 1 to 5")
            link = LINK.search(survey["text"])
            assert link is not None, survey["text"]
            page = await api.get(f"/v1/surveys/{link.group(2)}")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert 'name="score" value="5"' in page.text

            await customer.write("5")
            recorded = await ada.socket.wait_for(
                of_type("csat.recorded", conversation_id=conversation_id),
                what="csat.recorded",
            )
            assert (recorded["data"]["score"], recorded["data"]["channel"]) == (5, "webchat")
            await customer.told("Thank you for your feedback!")

            answered = await api.get(f"/v1/surveys/{link.group(2)}")
            assert "Your rating is recorded" in answered.text
            tampered = link.group(2)[:-2] + ("AA" if not link.group(2).endswith("AA") else "BB")
            assert (await api.get(f"/v1/surveys/{tampered}")).status_code == 404

        async with database.sessions() as session:
            conversations = await session.scalar(
                select(func.count())
                .select_from(Conversation)
                .where(Conversation.workspace_id == workspace_id)
            )
            row = await session.scalar(
                select(CsatSurvey).where(CsatSurvey.workspace_id == workspace_id)
            )
        assert conversations == 1
        assert row is not None
        assert (row.score, row.answered_via) == (5, "reply")
        assigned = [f for f in ada.socket.frames if f["type"] == "conversation.assigned"]
        assert len(assigned) == 1  # the "5" was not routed as a new conversation
    except Exception:
        for service in stack.values():
            print(f"--- {service.name} ---\n{service.log_tail()}")  # noqa: T201
        raise
    finally:
        await database.dispose()
