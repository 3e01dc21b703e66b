"""Assignment policy: eligibility and order, as pure functions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from shared.routing.ranking import (
    RULE_LEAST_LOADED,
    RULE_STICKY,
    AgentState,
    Requirement,
    rank_agents,
)

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
CHAT = Requirement(units=1)


def agent(
    load: float = 0,
    capacity: float = 3,
    status: str = "online",
    idle_minutes: int | None = None,
    tier: int = 1,
    skills: frozenset[str] = frozenset(),
    languages: frozenset[str] = frozenset({"en"}),
    teams: frozenset[uuid.UUID] = frozenset(),
) -> AgentState:
    return AgentState(
        agent_id=uuid.uuid4(),
        status=status,
        tier=tier,
        capacity_units=capacity,
        load_units=load,
        last_assigned_at=None if idle_minutes is None else NOW - timedelta(minutes=idle_minutes),
        skills=skills,
        languages=languages,
        team_ids=teams,
    )


def ids(agents: tuple[AgentState, ...]) -> list[uuid.UUID]:
    return [a.agent_id for a in agents]


def test_least_loaded_share_of_capacity_comes_first() -> None:
    busy, light, medium = agent(2, 3), agent(1, 4), agent(1, 2)

    ranking = rank_agents([busy, medium, light], CHAT)

    assert ids(ranking.eligible) == [light.agent_id, medium.agent_id, busy.agent_id]
    assert ranking.rule == RULE_LEAST_LOADED


def test_ties_go_to_the_longest_idle_and_never_assigned_first() -> None:
    recent, long_idle, never = agent(1, idle_minutes=1), agent(1, idle_minutes=60), agent(1)

    ranking = rank_agents([recent, long_idle, never], CHAT)

    assert ids(ranking.eligible) == [never.agent_id, long_idle.agent_id, recent.agent_id]


def test_exact_tier_first_then_higher_tiers_never_lower() -> None:
    tier1, tier2, tier3 = agent(tier=1), agent(tier=2, load=2), agent(tier=3)

    ranking = rank_agents([tier3, tier1, tier2], Requirement(units=1, tier=2))

    assert ids(ranking.eligible) == [tier2.agent_id, tier3.agent_id]
    assert ranking.excluded == {tier1.agent_id: "tier 1 below required 2"}


def test_skills_language_team_and_capacity_decide_eligibility() -> None:
    team = uuid.uuid4()
    fits = agent(
        skills=frozenset({"billing", "refunds"}),
        languages=frozenset({"de"}),
        teams=frozenset({team}),
    )
    no_skill = agent(
        skills=frozenset({"billing"}), languages=frozenset({"de"}), teams=frozenset({team})
    )
    no_language = agent(skills=frozenset({"billing", "refunds"}), teams=frozenset({team}))
    other_team = agent(skills=frozenset({"billing", "refunds"}), languages=frozenset({"de"}))
    full = agent(
        load=2.6,
        skills=frozenset({"billing", "refunds"}),
        languages=frozenset({"de"}),
        teams=frozenset({team}),
    )
    offline = agent(status="offline")
    requirement = Requirement(
        units=0.5, skills=frozenset({"billing", "refunds"}), language="de", team_id=team
    )

    ranking = rank_agents([fits, no_skill, no_language, other_team, full, offline], requirement)

    assert ids(ranking.eligible) == [fits.agent_id]
    assert ranking.excluded == {
        no_skill.agent_id: "missing skills ['refunds']",
        no_language.agent_id: "does not speak de",
        other_team.agent_id: "not in the team",
        full.agent_id: "no free capacity",
        offline.agent_id: "status offline",
    }


def test_an_eligible_sticky_owner_wins_over_load() -> None:
    idle, previous = agent(0), agent(2)

    ranking = rank_agents([idle, previous], CHAT, sticky_agent_id=previous.agent_id)

    assert ids(ranking.eligible) == [previous.agent_id, idle.agent_id]
    assert ranking.rule == RULE_STICKY
    explanation = ranking.explanation(previous.agent_id, CHAT)
    assert explanation["rule"] == RULE_STICKY
    assert explanation["sticky_agent_id"] == str(previous.agent_id)


def test_an_ineligible_sticky_owner_is_passed_over() -> None:
    idle, previous = agent(0), agent(3)

    ranking = rank_agents([idle, previous], CHAT, sticky_agent_id=previous.agent_id)

    assert ids(ranking.eligible) == [idle.agent_id]
    assert ranking.rule == RULE_LEAST_LOADED
    assert ranking.explanation(None, CHAT)["excluded"] == {
        str(previous.agent_id): "no free capacity"
    }


def test_no_candidates_means_no_one_is_eligible() -> None:
    ranking = rank_agents([], CHAT)
    assert ranking.eligible == ()
    assert ranking.explanation(None, CHAT)["rule"] == "queued_no_eligible_agent"
