"""CSAT on PostgreSQL through the API: settings, the survey on resolve, the signed link
(single use, expiry, tampering), follow-ups, and the channel rules that stop a survey."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from shared.db.models import (
    Contact,
    ContactIdentity,
    Conversation,
    CsatFollowUp,
    CsatSurvey,
    Message,
    utcnow,
)
from shared.db.session import Database
from shared.events import (
    CsatFollowUpClosed,
    CsatFollowUpOpened,
    CsatRecorded,
    OutboundMessageRequested,
    Topic,
    decode_event,
)
from tests.integration.test_api_agents import Desk, assert_problem, open_desk

pytestmark = pytest.mark.integration

BASE = "https://desk.acme.example"
TOKEN = re.compile(r"/v1/surveys/([\w-]+\.[\w-]+)")


@pytest.fixture
async def desk(pg_database: Database) -> AsyncIterator[Desk]:
    async with open_desk(pg_database) as opened:
        yield opened


async def conversation(
    desk: Desk,
    workspace_id: uuid.UUID,
    *,
    channel: str = "webchat",
    address: str | None = None,
    opted_out: bool = False,
    last_inbound_hours_ago: float = 0.1,
) -> uuid.UUID:
    address = address or f"wcs_{uuid.uuid4().hex}"
    async with desk.database.sessions() as session:
        contact = Contact(id=uuid.uuid4(), workspace_id=workspace_id)
        session.add(contact)
        await session.flush()
        if channel == "sms":
            session.add(
                ContactIdentity(
                    workspace_id=workspace_id,
                    contact_id=contact.id,
                    channel="sms",
                    kind="phone",
                    address=address,
                    opted_out_at=utcnow() if opted_out else None,
                )
            )
        row = Conversation(
            id=uuid.uuid4(),
            workspace_id=workspace_id,
            contact_id=contact.id,
            channel=channel,
            thread_key=address,
            customer_address=address,
            status="assigned",
        )
        session.add(row)
        await session.flush()
        session.add(
            Message(
                workspace_id=workspace_id,
                conversation_id=row.id,
                channel=channel,
                direction="inbound",
                text="help",
                created_at=utcnow() - timedelta(hours=last_inbound_hours_ago),
            )
        )
        await session.commit()
        return row.id


async def enable(desk: Desk, **overrides: object) -> None:
    body = {"enabled": True, "link_base_url": BASE, **overrides}
    saved = await desk.call("admin", "PUT", "/v1/csat/settings", json=body)
    assert saved.status_code == 200, saved.text


async def resolve(desk: Desk, conversation_id: uuid.UUID) -> None:
    response = await desk.call(
        "supervisor", "POST", f"/v1/conversations/{conversation_id}/resolve", json={}
    )
    assert response.status_code == 200, response.text


def survey_sent(desk: Desk, conversation_id: uuid.UUID) -> OutboundMessageRequested | None:
    sent = [
        d
        for d in (decode_event(r).data for r in desk.bus.records(Topic.OUTBOUND.value))
        if isinstance(d, OutboundMessageRequested) and d.conversation_id == conversation_id
    ]
    return sent[-1] if sent else None


async def surveys_of(desk: Desk, conversation_id: uuid.UUID) -> list[CsatSurvey]:
    async with desk.database.sessions() as session:
        return list(
            await session.scalars(
                select(CsatSurvey)
                .where(CsatSurvey.conversation_id == conversation_id)
                .order_by(CsatSurvey.sent_at)
            )
        )


async def test_settings_are_admin_only_and_validated(desk: Desk) -> None:
    defaults = await desk.call("supervisor", "GET", "/v1/csat/settings")
    assert defaults.status_code == 200
    assert defaults.json()["enabled"] is False
    assert_problem(await desk.call("supervisor", "PUT", "/v1/csat/settings", json={}), 403)
    bad = await desk.call(
        "admin", "PUT", "/v1/csat/settings", json={"enabled": True, "link_instruction": "x"}
    )
    assert_problem(bad, 422)
    assert (await desk.call("supervisor", "GET", "/v1/csat/settings")).json()["enabled"] is False
    await enable(desk, expires_hours=24, channels=["sms"])
    saved = (await desk.call("supervisor", "GET", "/v1/csat/settings")).json()
    assert (saved["enabled"], saved["expires_hours"], saved["channels"]) == (True, 24, ["sms"])
    # The other workspace keeps its own (default) settings.
    other = await desk.client.get("/v1/csat/settings", headers=desk.b.headers["supervisor"])
    assert other.json()["enabled"] is False


async def test_a_survey_link_records_one_score_and_a_low_one_opens_a_follow_up(
    desk: Desk,
) -> None:
    await enable(desk)
    conversation_id = await conversation(desk, desk.a.workspace_id)
    await resolve(desk, conversation_id)
    sent = survey_sent(desk, conversation_id)
    assert sent is not None
    assert "Reply with a number from 1 to 5." in sent.text
    match = TOKEN.search(sent.text)
    assert match is not None
    assert f"{BASE}/v1/surveys/{match.group(1)}" in sent.text
    token = match.group(1)
    [survey] = await surveys_of(desk, conversation_id)
    assert (survey.accepts_reply, survey.score) == (True, None)

    # Bad answers store nothing.
    assert_problem(await desk.client.post(f"/v1/surveys/{token}", json={"score": 6}), 422)
    assert_problem(await desk.client.post(f"/v1/surveys/{token}", json={"score": "x"}), 422)
    assert_problem(
        await desk.client.post(
            f"/v1/surveys/{token}", content=b"1", headers={"content-type": "text/plain"}
        ),
        415,
    )
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert_problem(await desk.client.post(f"/v1/surveys/{tampered}", json={"score": 1}), 404)
    assert (await surveys_of(desk, conversation_id))[0].score is None

    answered = await desk.client.post(f"/v1/surveys/{token}", json={"score": 1})
    assert answered.status_code == 200, answered.text
    assert answered.json()["score"] == 1
    again = await desk.client.post(f"/v1/surveys/{token}", json={"score": 5})
    assert_problem(again, 409)
    [survey] = await surveys_of(desk, conversation_id)
    assert (survey.score, survey.answered_via) == (1, "link")

    [recorded] = desk.events(CsatRecorded)
    assert (recorded.score, recorded.conversation_id) == (1, conversation_id)
    [opened] = desk.events(CsatFollowUpOpened)
    assert opened.score == 1

    # The follow-up: listed for supervisors, closed once with a note, tracked until then.
    listed = (await desk.call("supervisor", "GET", "/v1/csat/follow-ups")).json()["items"]
    assert [f["id"] for f in listed] == [str(opened.follow_up_id)]
    other_workspace = await desk.client.post(
        f"/v1/csat/follow-ups/{opened.follow_up_id}/close",
        json={"note": "not mine"},
        headers=desk.b.headers["supervisor"],
    )
    assert_problem(other_workspace, 404)
    assert_problem(
        await desk.call(
            "supervisor", "POST", f"/v1/csat/follow-ups/{opened.follow_up_id}/close", json={}
        ),
        422,
    )
    closed = await desk.call(
        "supervisor",
        "POST",
        f"/v1/csat/follow-ups/{opened.follow_up_id}/close",
        json={"note": "Apologised and refunded."},
    )
    assert closed.status_code == 200, closed.text
    assert closed.json()["closed_by_agent_id"] == str(desk.a.agent_ids["sam@demo.omniroute.dev"])
    assert_problem(
        await desk.call(
            "supervisor",
            "POST",
            f"/v1/csat/follow-ups/{opened.follow_up_id}/close",
            json={"note": "twice"},
        ),
        409,
    )
    [closed_event] = desk.events(CsatFollowUpClosed)
    assert closed_event.note == "Apologised and refunded."
    assert (await desk.call("supervisor", "GET", "/v1/csat/follow-ups")).json()["items"] == []
    done = (
        await desk.call("supervisor", "GET", "/v1/csat/follow-ups", params={"status": "closed"})
    ).json()["items"]
    assert done[0]["note"] == "Apologised and refunded."


async def test_the_rating_page_and_its_form(desk: Desk) -> None:
    await enable(desk)
    conversation_id = await conversation(desk, desk.a.workspace_id)
    await resolve(desk, conversation_id)
    sent = survey_sent(desk, conversation_id)
    assert sent is not None
    match = TOKEN.search(sent.text)
    assert match is not None
    token = match.group(1)
    page = await desk.client.get(f"/v1/surveys/{token}")
    assert page.status_code == 200
    assert page.text.count('name="score"') == 5
    assert (await surveys_of(desk, conversation_id))[0].score is None  # opening is not voting

    posted = await desk.client.post(f"/v1/surveys/{token}", data={"score": "4"})
    assert posted.status_code == 200
    assert "Your rating is recorded" in posted.text
    assert (await surveys_of(desk, conversation_id))[0].score == 4
    assert desk.events(CsatFollowUpOpened) == []  # 4 is not a low score
    twice = await desk.client.post(f"/v1/surveys/{token}", data={"score": "1"})
    assert "answered already" in twice.text
    assert (await surveys_of(desk, conversation_id))[0].score == 4


async def test_an_expired_survey_answers_410(desk: Desk) -> None:
    await enable(desk)
    conversation_id = await conversation(desk, desk.a.workspace_id)
    await resolve(desk, conversation_id)
    sent = survey_sent(desk, conversation_id)
    assert sent is not None
    match = TOKEN.search(sent.text)
    assert match is not None
    async with desk.database.sessions() as session:
        await session.execute(
            update(CsatSurvey)
            .where(CsatSurvey.conversation_id == conversation_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    assert_problem(await desk.client.post(f"/v1/surveys/{match.group(1)}", json={"score": 3}), 410)
    assert (await desk.client.get(f"/v1/surveys/{match.group(1)}")).status_code == 410
    assert (await surveys_of(desk, conversation_id))[0].score is None


async def test_channel_rules_stop_the_survey(desk: Desk) -> None:
    await enable(desk)
    opted_out = await conversation(
        desk, desk.a.workspace_id, channel="sms", address="+15550009999", opted_out=True
    )
    whatsapp_late = await conversation(
        desk,
        desk.a.workspace_id,
        channel="social",
        address="whatsapp:+15550008888",
        last_inbound_hours_ago=30,
    )
    whatsapp_recent = await conversation(
        desk, desk.a.workspace_id, channel="social", address="whatsapp:+15550007777"
    )
    for conversation_id in (opted_out, whatsapp_late, whatsapp_recent):
        await resolve(desk, conversation_id)
    assert survey_sent(desk, opted_out) is None
    assert await surveys_of(desk, opted_out) == []
    assert survey_sent(desk, whatsapp_late) is None
    assert await surveys_of(desk, whatsapp_late) == []
    assert survey_sent(desk, whatsapp_recent) is not None
    assert len(await surveys_of(desk, whatsapp_recent)) == 1


async def test_surveys_off_sends_nothing_and_a_new_resolve_replaces_an_open_survey(
    desk: Desk,
) -> None:
    quiet = await conversation(desk, desk.a.workspace_id)
    await resolve(desk, quiet)
    assert survey_sent(desk, quiet) is None

    await enable(desk)
    conversation_id = await conversation(desk, desk.a.workspace_id)
    await resolve(desk, conversation_id)
    reopened = await desk.call("supervisor", "POST", f"/v1/conversations/{conversation_id}/reopen")
    assert reopened.status_code == 200, reopened.text
    await resolve(desk, conversation_id)
    first, second = await surveys_of(desk, conversation_id)
    assert first.expires_at <= second.sent_at  # the first closed when the second went out
    async with desk.database.sessions() as session:
        follow_ups = await session.scalar(
            select(func.count())
            .select_from(CsatFollowUp)
            .where(CsatFollowUp.workspace_id == desk.a.workspace_id)
        )
    assert follow_ups == 0


async def test_email_gets_the_link_only(desk: Desk) -> None:
    """Email has no "reply 1-5" (a reply joins the thread); the link is the way."""
    await enable(desk)
    customer = f"kim-{uuid.uuid4().hex[:6]}@customer.example"
    conversation_id = await conversation(
        desk, desk.a.workspace_id, channel="email", address=customer
    )
    await resolve(desk, conversation_id)
    sent = survey_sent(desk, conversation_id)
    assert sent is not None
    assert sent.email is not None
    assert sent.email.auto_submitted  # a system message, not a person's reply
    assert "Reply with a number" not in sent.text
    assert f"Rate here: {BASE}/v1/surveys/" in sent.text
    [survey] = await surveys_of(desk, conversation_id)
    assert survey.accepts_reply is False

    # Without a public URL for links, an email customer cannot be asked at all.
    await enable(desk, link_base_url=None)
    unasked = await conversation(desk, desk.a.workspace_id, channel="email", address=customer)
    await resolve(desk, unasked)
    assert survey_sent(desk, unasked) is None
    assert await surveys_of(desk, unasked) == []
