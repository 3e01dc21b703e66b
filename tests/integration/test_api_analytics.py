"""Analytics on PostgreSQL against a seeded data set whose figures are computed here,
independently, from the raw seeded rows (``statistics``, ``collections``, VADER)."""

from __future__ import annotations

import random
import statistics
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from shared.db.models import (
    Agent,
    Assignment,
    Contact,
    Conversation,
    CsatSurvey,
    Message,
    Team,
)
from shared.db.session import Database
from tests.integration.test_api_agents import ADA, BEN, CY, SAM, Desk, assert_problem, open_desk

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
END = START + timedelta(days=7)
WINDOW = {"from": START.isoformat(), "to": END.isoformat()}
CHANNELS = ("webchat", "sms", "email")
PHRASES = {
    "webchat": ["my refund is late", "refund please, the invoice is wrong", "great service"],
    "sms": ["delivery never arrived", "where is my delivery", "terrible delay, angry"],
    "email": ["invoice question", "invoice copy needed", "thanks, lovely help"],
}


@dataclass
class Seeded:
    conversations: list[dict[str, Any]] = field(default_factory=list)
    messages: list[tuple[str, datetime, str]] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def desk(pg_database: Database) -> AsyncIterator[Desk]:
    async with open_desk(pg_database) as opened:
        yield opened


async def seed(desk: Desk, workspace_id: uuid.UUID, rng: random.Random) -> Seeded:
    """Conversations inside the window, plus some just outside it (must not count)."""
    agents = [desk.a.agent_ids[e] for e in (ADA, BEN, CY, SAM)]
    seeded = Seeded()
    async with desk.database.sessions() as session:
        contact = Contact(id=uuid.uuid4(), workspace_id=workspace_id)
        session.add(contact)
        await session.flush()
        stamps = [START + timedelta(seconds=rng.randrange(7 * 86400)) for _ in range(80)]
        stamps += [START - timedelta(seconds=1), END, END + timedelta(hours=5)]
        for created in stamps:
            inside = START <= created < END
            channel = rng.choice(CHANNELS)
            tier = rng.randint(1, 3)
            responded = (
                created + timedelta(seconds=rng.randrange(5, 900)) if rng.random() < 0.8 else None
            )
            resolved = (
                created + timedelta(seconds=rng.randrange(900, 20_000))
                if rng.random() < 0.6
                else None
            )
            due = created + timedelta(seconds=300)
            conversation = Conversation(
                id=uuid.uuid4(),
                workspace_id=workspace_id,
                contact_id=contact.id,
                channel=channel,
                thread_key=uuid.uuid4().hex,
                status="resolved" if resolved else "assigned",
                tier=tier,
                created_at=created,
                first_response_at=responded,
                resolved_at=resolved,
                sla_due_at=due,
            )
            session.add(conversation)
            await session.flush()
            owners = [rng.choice(agents) for _ in range(rng.choice((0, 1, 1, 2, 3)))]
            assigned_at = []
            for n, agent_id in enumerate(owners):
                at = created + timedelta(seconds=rng.randrange(1, 120) + 600 * n)
                assigned_at.append(at)
                session.add(
                    Assignment(
                        workspace_id=workspace_id,
                        conversation_id=conversation.id,
                        agent_id=agent_id,
                        reason="seed",
                        load_units=1.0,
                        created_at=at,
                        closed_at=at + timedelta(seconds=60),
                    )
                )
            text = rng.choice(PHRASES[channel])
            session.add(
                Message(
                    workspace_id=workspace_id,
                    conversation_id=conversation.id,
                    channel=channel,
                    direction="inbound",
                    text=text,
                    created_at=created,
                )
            )
            session.add(  # an agent's reply is not the customer's sentiment
                Message(
                    workspace_id=workspace_id,
                    conversation_id=conversation.id,
                    channel=channel,
                    direction="outbound",
                    text="We are so sorry, awful, terrible.",
                    created_at=created,
                )
            )
            agent_at_resolve = owners[-1] if owners else None
            score = rng.randint(1, 5) if resolved and rng.random() < 0.7 else None
            if score is not None:
                session.add(
                    CsatSurvey(
                        workspace_id=workspace_id,
                        conversation_id=conversation.id,
                        channel=channel,
                        thread_key=conversation.thread_key,
                        tier=tier,
                        agent_id=agent_at_resolve,
                        accepts_reply=True,
                        sent_at=created,
                        expires_at=created + timedelta(days=3),
                        score=score,
                        answered_via="reply",
                        responded_at=created,
                    )
                )
            if inside:
                seeded.conversations.append(
                    {
                        "created": created,
                        "channel": channel,
                        "tier": tier,
                        "responded": responded,
                        "resolved": resolved,
                        "due": due,
                        "owners": owners,
                        "assigned_at": assigned_at,
                    }
                )
                seeded.messages.append((channel, created, text))
                if score is not None:
                    seeded.scores.append(
                        {
                            "score": score,
                            "agent": agent_at_resolve,
                            "channel": channel,
                            "tier": tier,
                        }
                    )
        await session.commit()
    return seeded


def quantiles(values: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[89], cuts[98]


async def test_figures_match_the_seeded_rows(desk: Desk) -> None:
    rng = random.Random(20261122)  # noqa: S311 - a reproducible data set
    seeded = await seed(desk, desk.a.workspace_id, rng)
    await seed(desk, desk.b.workspace_id, random.Random(7))  # noqa: S311
    rows = seeded.conversations

    # Volume by hour of week (UTC) and channel.
    volume = (await desk.call("supervisor", "GET", "/v1/analytics/volume", params=WINDOW)).json()
    assert volume["total"] == len(rows) == 80
    assert volume["by_channel"] == dict(sorted(Counter(r["channel"] for r in rows).items()))
    expected_cells = Counter((r["created"].weekday() * 24 + r["created"].hour) for r in rows)
    assert len(volume["hours"]) == 168
    for cell in volume["hours"]:
        assert cell["total"] == expected_cells.get(cell["hour_of_week"], 0)
    monday_9 = [r for r in rows if r["created"].weekday() == 0 and r["created"].hour == 9]
    assert volume["hours"][9]["by_channel"] == dict(
        sorted(Counter(r["channel"] for r in monday_9).items())
    )

    # First-response, resolution and wait percentiles.
    times = (
        await desk.call("supervisor", "GET", "/v1/analytics/response-times", params=WINDOW)
    ).json()
    first = [(r["responded"] - r["created"]).total_seconds() for r in rows if r["responded"]]
    resolution = [(r["resolved"] - r["created"]).total_seconds() for r in rows if r["resolved"]]
    waits = [(min(r["assigned_at"]) - r["created"]).total_seconds() for r in rows if r["owners"]]
    for name, values in (("first_response", first), ("resolution", resolution), ("wait", waits)):
        got = times[name]
        assert got["count"] == len(values)
        assert got["mean_seconds"] == pytest.approx(statistics.fmean(values))
        p50, p90, p99 = quantiles(values)
        assert (got["p50_seconds"], got["p90_seconds"], got["p99_seconds"]) == (
            pytest.approx(p50),
            pytest.approx(p90),
            pytest.approx(p99),
        )
    sms_first = [
        (r["responded"] - r["created"]).total_seconds()
        for r in rows
        if r["responded"] and r["channel"] == "sms"
    ]
    assert times["by_channel"]["sms"]["first_response"]["p50_seconds"] == pytest.approx(
        statistics.median(sms_first)
    )

    # SLA compliance per tier (all due times are in the past).
    sla = (await desk.call("supervisor", "GET", "/v1/analytics/sla", params=WINDOW)).json()
    for tier_figures in sla["tiers"]:
        of_tier = [r for r in rows if r["tier"] == tier_figures["tier"]]
        met = sum(1 for r in of_tier if r["responded"] and r["responded"] <= r["due"])
        assert tier_figures["met"] == met
        assert tier_figures["breached"] == len(of_tier) - met
        assert tier_figures["pending"] == 0
        assert tier_figures["compliance"] == pytest.approx(met / len(of_tier))

    # Transfers and touchpoints.
    handoffs = (
        await desk.call("supervisor", "GET", "/v1/analytics/handoffs", params=WINDOW)
    ).json()
    transfers = [max(0, len(r["owners"]) - 1) for r in rows]
    touchpoints = [len(set(r["owners"])) for r in rows]
    assert handoffs["conversations"] == 80
    assert handoffs["transfers_total"] == sum(transfers)
    assert handoffs["transfers_per_conversation"] == pytest.approx(statistics.fmean(transfers))
    assert handoffs["touchpoints_per_conversation"] == pytest.approx(statistics.fmean(touchpoints))
    assert handoffs["transfers_distribution"] == {
        str(k): v for k, v in sorted(Counter(transfers).items())
    }

    # CSAT: the shape the console reads, and the breakdowns.
    csat = (await desk.call("supervisor", "GET", "/v1/analytics/csat", params=WINDOW)).json()
    scores = [s["score"] for s in seeded.scores]
    assert csat["count"] == len(scores) > 0
    assert csat["average"] == pytest.approx(statistics.fmean(scores))
    assert csat["distribution"] == {str(n): scores.count(n) for n in range(1, 6)}
    by_agent = {g["key"]: g for g in csat["by_agent"]}
    per_agent: dict[str, list[int]] = defaultdict(list)
    for s in seeded.scores:
        if s["agent"] is not None:
            per_agent[str(s["agent"])].append(s["score"])
    assert set(by_agent) == set(per_agent)
    for agent_id, values in per_agent.items():
        assert by_agent[agent_id]["average"] == pytest.approx(statistics.fmean(values))
        assert by_agent[agent_id]["count"] == len(values)
    assert by_agent[str(desk.a.agent_ids[ADA])]["name"] == "Ada (tier 1)"
    by_tier = {g["key"]: g["count"] for g in csat["by_tier"]}
    assert by_tier == {str(k): v for k, v in Counter(s["tier"] for s in seeded.scores).items()}

    # Sentiment per channel and top keywords.
    sentiment = (
        await desk.call("supervisor", "GET", "/v1/analytics/sentiment", params=WINDOW)
    ).json()
    vader = SentimentIntensityAnalyzer()
    channels = {c["channel"]: c for c in sentiment["channels"]}
    assert sentiment["sampled"] is False
    for channel in CHANNELS:
        texts = [t for ch, _, t in seeded.messages if ch == channel]
        expected = statistics.fmean(vader.polarity_scores(t)["compound"] for t in texts)
        assert channels[channel]["messages"] == len(texts)
        assert channels[channel]["average_sentiment"] == pytest.approx(expected)
    sms_keywords = Counter(
        w
        for _, _, t in (m for m in seeded.messages if m[0] == "sms")
        for w in {"delivery", "arrived", "terrible", "delay", "angry", "never"}
        if w in t.split() or w + "," in t.split()
    )
    top = channels["sms"]["top_keywords"][0]
    assert top == {"keyword": "delivery", "messages": sms_keywords["delivery"]}


async def test_the_forecast_staffs_the_busy_hour_by_erlang_c(desk: Desk) -> None:
    """100 chats in each of two Monday 10:00 hours, 3 minutes each: 5 Erlangs; 80 % within
    20 s needs 8 agents (the textbook example); every other hour needs none."""
    workspace_id = desk.a.workspace_id
    start = datetime(2026, 2, 2, tzinfo=UTC)  # a Monday
    agent_id = desk.a.agent_ids[ADA]
    async with desk.database.sessions() as session:
        contact = Contact(id=uuid.uuid4(), workspace_id=workspace_id)
        session.add(contact)
        await session.flush()
        for week in range(2):
            for n in range(100):
                created = start + timedelta(days=7 * week, hours=10, seconds=n * 30)
                conversation = Conversation(
                    id=uuid.uuid4(),
                    workspace_id=workspace_id,
                    contact_id=contact.id,
                    channel="webchat",
                    thread_key=uuid.uuid4().hex,
                    status="resolved",
                    created_at=created,
                )
                session.add(conversation)
                await session.flush()
                session.add(
                    Assignment(
                        workspace_id=workspace_id,
                        conversation_id=conversation.id,
                        agent_id=agent_id,
                        reason="seed",
                        load_units=1.0,
                        created_at=created,
                        closed_at=created + timedelta(seconds=180),
                    )
                )
        await session.commit()
    params = {
        "from": start.isoformat(),
        "to": (start + timedelta(days=14)).isoformat(),
        "channel": "webchat",
        "target_share": "0.8",
        "target_seconds": "20",
    }
    response = await desk.call("supervisor", "GET", "/v1/analytics/forecast", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    inputs = body["inputs"]
    assert inputs["handle_seconds"] == pytest.approx(180)
    assert (inputs["handle_seconds_source"], inputs["handled_samples"]) == ("observed", 200)
    assert (inputs["target_share"], inputs["target_seconds"]) == (0.8, 20)
    busy = body["hours"][10]
    assert busy["arrivals_per_hour"] == pytest.approx(100)
    assert busy["traffic_erlangs"] == pytest.approx(5)
    assert busy["agents"] == 8
    assert busy["service_level"] == pytest.approx(0.8801, abs=5e-4)
    assert body["peak_agents"] == 8
    assert all(h["agents"] == 0 for h in body["hours"] if h["hour_of_week"] != 10)

    # Two conversations at once per agent halve the agents (Erlang C servers ÷ 2).
    halved = await desk.call(
        "supervisor", "GET", "/v1/analytics/forecast", params={**params, "concurrency": "2"}
    )
    assert halved.json()["hours"][10]["agents"] == 4


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-01-10T00:00:00Z", "to": "2026-01-05T00:00:00Z"},
        {"from": "2025-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "yesterday"},
        {"timezone": "Mars/Olympus"},
    ],
)
async def test_a_bad_window_is_a_422(desk: Desk, params: dict[str, str]) -> None:
    assert_problem(await desk.call("supervisor", "GET", "/v1/analytics/volume", params=params), 422)


async def test_agents_may_not_read_analytics(desk: Desk) -> None:
    for path in ("/v1/analytics/csat", "/v1/analytics/forecast"):
        assert_problem(await desk.call("agent", "GET", path), 403)
    response = await desk.call("supervisor_key", "GET", "/v1/analytics/csat")
    assert response.status_code == 200
    assert response.json()["distribution"] == {str(n): 0 for n in range(1, 6)}


@pytest.mark.parametrize(
    ("table", "index", "columns"),
    [
        ("conversations", "ix_conversations_workspace_created", "(workspace_id, created_at)"),
        ("messages", "ix_messages_workspace_created", "(workspace_id, created_at)"),
        ("csat_surveys", "ix_csat_surveys_responded", "(workspace_id, responded_at)"),
        ("csat_surveys", "ix_csat_surveys_sent", "(workspace_id, sent_at)"),
        ("assignments", "ix_assignments_conversation_created", "(conversation_id, created_at)"),
    ],
)
async def test_every_window_query_has_an_index_range_to_read(
    pg_database: Database, table: str, index: str, columns: str
) -> None:
    """The analytics filter on a workspace (or conversation) and a time range; these
    B-tree indexes make that one range read, not a table scan."""
    async with pg_database.sessions() as session:
        definition = await session.scalar(
            text("SELECT indexdef FROM pg_indexes WHERE tablename = :t AND indexname = :i"),
            {"t": table, "i": index},
        )
    assert definition is not None
    assert definition.endswith(f"USING btree {columns}")


async def seed_surveys(
    desk: Desk, workspace_id: uuid.UUID, rng: random.Random
) -> list[dict[str, Any]]:
    """Surveys sent around the window: answered (some after the window ends), unanswered
    and expired, unanswered and still open. Returns the raw rows as seeded."""
    async with desk.database.sessions() as session:
        teams = list(
            await session.scalars(select(Team.id).where(Team.workspace_id == workspace_id))
        )
        agents = list(
            await session.scalars(select(Agent.id).where(Agent.workspace_id == workspace_id))
        )
        contact = Contact(id=uuid.uuid4(), workspace_id=workspace_id)
        session.add(contact)
        await session.flush()
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        for _ in range(90):
            sent = START + timedelta(seconds=rng.randrange(-86_400, 8 * 86_400))
            channel = rng.choice(CHANNELS)
            tier = rng.randint(1, 3)
            agent_id = rng.choice([*agents, None])
            team_id = rng.choice([*teams, None])
            fate = rng.choice(("answered", "answered", "expired", "open"))
            answered_at = sent + timedelta(hours=rng.randrange(1, 60))
            row = {
                "sent": sent,
                "channel": channel,
                "tier": tier,
                "agent": agent_id,
                "team": team_id,
                "answered": fate == "answered",
                "open": fate == "open",
                "score": rng.randint(1, 5) if fate == "answered" else None,
                "responded": answered_at if fate == "answered" else None,
            }
            rows.append(row)
            conversation = Conversation(
                id=uuid.uuid4(),
                workspace_id=workspace_id,
                contact_id=contact.id,
                channel=channel,
                thread_key=uuid.uuid4().hex,
                status="resolved",
                tier=tier,
                created_at=sent - timedelta(hours=1),
                resolved_at=sent,
            )
            session.add(conversation)
            await session.flush()
            session.add(
                CsatSurvey(
                    workspace_id=workspace_id,
                    conversation_id=conversation.id,
                    channel=channel,
                    thread_key=conversation.thread_key,
                    tier=tier,
                    agent_id=agent_id,
                    team_id=team_id,
                    accepts_reply=True,
                    sent_at=sent,
                    expires_at=now + timedelta(days=1) if row["open"] else sent + timedelta(3),
                    score=row["score"],
                    answered_via="link" if row["answered"] else None,
                    responded_at=row["responded"],
                )
            )
        await session.commit()
    return rows


async def test_csat_response_rate_matches_the_seeded_surveys(desk: Desk) -> None:
    rows = await seed_surveys(desk, desk.a.workspace_id, random.Random(1122))  # noqa: S311
    await seed_surveys(desk, desk.b.workspace_id, random.Random(3))  # noqa: S311
    report = (await desk.call("supervisor", "GET", "/v1/analytics/csat", params=WINDOW)).json()

    sent = [r for r in rows if START <= r["sent"] < END]
    scored = [r for r in rows if r["responded"] is not None and START <= r["responded"] < END]
    assert 0 < len(sent) < len(rows)
    assert any(r["answered"] and r["responded"] >= END for r in sent)  # answered later: counts
    assert any(r["sent"] < START for r in scored)  # sent earlier: a score, not a sent survey

    def expected(group: list[dict[str, Any]]) -> dict[str, Any]:
        answered = sum(r["answered"] for r in group)
        return {
            "surveys_sent": len(group),
            "surveys_answered": answered,
            "surveys_open": sum(r["open"] for r in group),
            "response_rate": pytest.approx(answered / len(group)) if group else None,
        }

    def figures(found: dict[str, Any]) -> dict[str, Any]:
        return {
            k: found[k]
            for k in ("surveys_sent", "surveys_answered", "surveys_open", "response_rate")
        }

    assert figures(report) == expected(sent)
    assert report["count"] == len(scored)
    assert report["distribution"] == {
        str(n): sum(r["score"] == n for r in scored) for n in range(1, 6)
    }
    for kind, field_ in (
        ("by_agent", "agent"),
        ("by_team", "team"),
        ("by_channel", "channel"),
        ("by_tier", "tier"),
    ):
        keys = {str(r[field_]) for r in sent + scored if r[field_] is not None}
        found = {g["key"]: g for g in report[kind]}
        assert set(found) == keys, kind
        for key in keys:
            group = [r for r in sent if str(r[field_]) == key]
            assert figures(found[key]) == expected(group), (kind, key)
            group_scores = [r["score"] for r in scored if str(r[field_]) == key]
            assert found[key]["count"] == len(group_scores)

    empty = (
        await desk.call(
            "supervisor",
            "GET",
            "/v1/analytics/csat",
            params={"from": "2025-01-01T00:00:00", "to": "2025-01-02T00:00:00"},
        )
    ).json()
    assert (empty["surveys_sent"], empty["response_rate"]) == (0, None)
