"""Assignment policy: eligibility and order, as pure functions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.router.assignment import AgentCandidate, rank_agents

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def agent(
    load: float, capacity: float = 3, status: str = "online", idle_minutes: int | None = None
) -> AgentCandidate:
    return AgentCandidate(
        agent_id=uuid.uuid4(),
        status=status,
        capacity_units=capacity,
        load_units=load,
        last_assigned_at=None if idle_minutes is None else NOW - timedelta(minutes=idle_minutes),
    )


def test_least_loaded_share_of_capacity_comes_first() -> None:
    busy, light, medium = agent(2, 3), agent(1, 4), agent(1, 2)

    ranking = rank_agents([busy, medium, light], units=1)

    assert [c.agent_id for c in ranking.eligible] == [
        light.agent_id,
        medium.agent_id,
        busy.agent_id,
    ]


def test_ties_go_to_the_longest_idle_and_never_assigned_first() -> None:
    recent, long_idle, never = agent(1, idle_minutes=1), agent(1, idle_minutes=60), agent(1)

    ranking = rank_agents([recent, long_idle, never], units=1)

    assert [c.agent_id for c in ranking.eligible] == [
        never.agent_id,
        long_idle.agent_id,
        recent.agent_id,
    ]


def test_offline_away_and_full_agents_are_excluded_with_a_reason() -> None:
    offline, away, full, fits_exactly = (
        agent(0, status="offline"),
        agent(0, status="away"),
        agent(2.5, 3),
        agent(2, 3),
    )

    ranking = rank_agents([offline, away, full, fits_exactly], units=1)

    assert [c.agent_id for c in ranking.eligible] == [fits_exactly.agent_id]
    assert ranking.excluded == {
        offline.agent_id: "status offline",
        away.agent_id: "status away",
        full.agent_id: "no free capacity",
    }
    explanation = ranking.explanation(fits_exactly.agent_id)
    assert explanation["rule"] == "least_loaded_then_longest_idle"
    assert explanation["chosen_agent_id"] == str(fits_exactly.agent_id)


def test_no_candidates_means_no_one_is_eligible() -> None:
    assert rank_agents([], units=1).eligible == ()
