"""Properties of queue matching: one owner, capacity held, FIFO, no idle agent while work waits.

Hypothesis generates agents (status, tier, skills, languages, teams, capacity, load) and
queued conversations (priority, age, requirement, sticky agent) and checks the plan of
``match_queue`` against the invariants of the routing semantics.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.routing.ranking import (
    RULE_LEAST_LOADED,
    RULE_STICKY,
    AgentState,
    Match,
    QueuedConversation,
    QueueNoticeState,
    Requirement,
    estimate_wait_seconds,
    exclusion_reason,
    match_queue,
    notice_is_due,
    queue_order,
    queue_positions,
    rank_agents,
)

EPSILON = 1e-9
NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
SKILLS = ("billing", "refunds", "tech")
LANGUAGES = ("en", "de", "fr")
TEAMS = (uuid.UUID(int=0xA), uuid.UUID(int=0xB))

PROPERTY = settings(max_examples=200, deadline=None)

# Strategies are built once at import, and sets are drawn as one bit mask each: building
# strategies per draw, or drawing set members one by one, makes generation several times slower.
T = TypeVar("T")


def subsets(items: tuple[T, ...], *, min_size: int = 0) -> st.SearchStrategy[frozenset[T]]:
    masks = st.integers(min_value=0, max_value=2 ** len(items) - 1)
    return masks.map(
        lambda mask: frozenset(item for bit, item in enumerate(items) if mask >> bit & 1)
    ).filter(lambda chosen: len(chosen) >= min_size)


HALF_UNITS = st.integers(min_value=0, max_value=8)  # capacity and load in steps of 0.5
AgentFields = tuple[
    str, int, int, int, int | None, frozenset[str], frozenset[str], frozenset[uuid.UUID]
]
agent_fields: st.SearchStrategy[AgentFields] = st.tuples(
    st.sampled_from(("online", "online", "online", "away", "offline")),
    st.integers(min_value=1, max_value=3),
    HALF_UNITS,
    HALF_UNITS,
    st.none() | st.integers(min_value=0, max_value=5),
    subsets(SKILLS),
    subsets(LANGUAGES, min_size=1),
    subsets(TEAMS),
)


def make_agent(index: int, fields: AgentFields) -> AgentState:
    status, tier, capacity, load, idle, skills, languages, teams = fields
    return AgentState(
        agent_id=uuid.UUID(int=index + 1),
        status=status,
        tier=tier,
        capacity_units=capacity / 2,
        load_units=min(load, capacity) / 2,  # never above capacity
        last_assigned_at=None if idle is None else NOW - timedelta(minutes=idle),
        skills=skills,
        languages=languages,
        team_ids=teams,
    )


agent_lists = st.lists(agent_fields, min_size=1, max_size=7).map(
    lambda rows: [make_agent(i, row) for i, row in enumerate(rows)]
)

# Weighted towards easy requirements, so that plans both match and leave some waiting.
requirements = st.builds(
    Requirement,
    units=st.sampled_from((0.5, 1.0)),
    tier=st.sampled_from((1, 1, 1, 2, 3)),
    skills=st.sampled_from(
        (frozenset(), frozenset(), *(frozenset({skill}) for skill in SKILLS), frozenset(SKILLS[:2]))
    ),
    language=st.sampled_from((None, None, *LANGUAGES)),
    team_id=st.sampled_from((None, None, None, *TEAMS)),
)

# (priority, minutes ago, index into the requirement pool, sticky agent index or None)
conversation_fields = st.tuples(
    st.integers(min_value=0, max_value=2),
    st.integers(min_value=0, max_value=10),
    st.integers(min_value=0, max_value=3),
    st.none() | st.integers(min_value=0, max_value=7),
)


@dataclass(frozen=True)
class Scenario:
    agents: list[AgentState]
    queued: list[QueuedConversation]


def make_queue(
    pool: list[Requirement], rows: list[tuple[int, int, int, int | None]]
) -> list[QueuedConversation]:
    return [
        QueuedConversation(
            conversation_id=uuid.UUID(int=1000 + i),
            priority=priority,
            queued_at=NOW - timedelta(minutes=minutes_ago),
            requirement=pool[requirement % len(pool)],
            # At most 7 agents, so sticky index 7 is an unknown agent.
            sticky_agent_id=None if sticky is None else uuid.UUID(int=sticky + 1),
        )
        for i, (priority, minutes_ago, requirement, sticky) in enumerate(rows)
    ]


# A small pool of requirements so that identical requirements (FIFO) are common.
queues = st.builds(
    make_queue,
    st.lists(requirements, min_size=1, max_size=4),
    st.lists(conversation_fields, min_size=1, max_size=12),
)
scenarios = st.builds(Scenario, agent_lists, queues)


def replay(scenario: Scenario, matches: list[Match]) -> dict[uuid.UUID, AgentState]:
    """Apply the plan in queue order, checking each match against the loads at that point."""
    state = {a.agent_id: a for a in scenario.agents}
    by_conversation = {m.conversation_id: m for m in matches}
    for conversation in queue_order(scenario.queued):
        match = by_conversation.get(conversation.conversation_id)
        if match is None:
            continue
        agent = state[match.agent_id]
        assert match.requirement == conversation.requirement
        assert exclusion_reason(agent, conversation.requirement) is None, (agent, conversation)
        state[agent.agent_id] = replace(
            agent, load_units=agent.load_units + conversation.requirement.units
        )
    return state


# --- the invariants ------------------------------------------------------------------


@PROPERTY
@given(scenarios)
def test_never_two_owners(scenario: Scenario) -> None:
    matches = match_queue(scenario.queued, scenario.agents)

    owners = Counter(m.conversation_id for m in matches)
    assert all(count == 1 for count in owners.values())
    assert set(owners) <= {q.conversation_id for q in scenario.queued}
    assert {m.agent_id for m in matches} <= {a.agent_id for a in scenario.agents}


@PROPERTY
@given(scenarios)
def test_never_over_capacity(scenario: Scenario) -> None:
    matches = match_queue(scenario.queued, scenario.agents)

    planned: dict[uuid.UUID, float] = {}
    for match in matches:
        planned[match.agent_id] = planned.get(match.agent_id, 0.0) + match.requirement.units
    for agent in scenario.agents:
        total = agent.load_units + planned.get(agent.agent_id, 0.0)
        assert total <= agent.capacity_units + EPSILON


@PROPERTY
@given(scenarios)
def test_every_match_is_eligible_and_the_best_ranked_at_that_point(scenario: Scenario) -> None:
    matches = match_queue(scenario.queued, scenario.agents)
    replay(scenario, matches)

    # Replaying with rank_agents gives the same choice: the plan is the greedy policy.
    state = {a.agent_id: a for a in scenario.agents}
    by_conversation = {m.conversation_id: m for m in matches}
    for conversation in queue_order(scenario.queued):
        ranking = rank_agents(
            list(state.values()),
            conversation.requirement,
            sticky_agent_id=conversation.sticky_agent_id,
        )
        match = by_conversation.get(conversation.conversation_id)
        if ranking.best is None:
            assert match is None
            continue
        assert match is not None
        assert match.agent_id == ranking.best.agent_id
        chosen = state[match.agent_id]
        state[chosen.agent_id] = replace(
            chosen, load_units=chosen.load_units + conversation.requirement.units
        )


@PROPERTY
@given(scenarios)
def test_fifo_within_a_priority(scenario: Scenario) -> None:
    matches = match_queue(scenario.queued, scenario.agents)
    matched = {m.conversation_id for m in matches}
    order = queue_order(scenario.queued)

    for i, earlier in enumerate(order):
        if earlier.conversation_id in matched:
            continue
        for later in order[i + 1 :]:
            if (later.priority, later.requirement) == (earlier.priority, earlier.requirement):
                assert later.conversation_id not in matched, (earlier, later)


@PROPERTY
@given(scenarios)
def test_no_eligible_agent_idles_while_a_matching_conversation_waits(scenario: Scenario) -> None:
    matches = match_queue(scenario.queued, scenario.agents)
    final = replay(scenario, matches)
    matched = {m.conversation_id for m in matches}

    for conversation in scenario.queued:
        if conversation.conversation_id in matched:
            continue
        for agent in final.values():
            assert exclusion_reason(agent, conversation.requirement) is not None, (
                agent,
                conversation,
            )


@PROPERTY
@given(queues)
def test_queue_positions_are_one_to_n_in_queue_order(queued: list[QueuedConversation]) -> None:
    positions = queue_positions(queued)
    order = queue_order(queued)

    assert [positions[q.conversation_id] for q in order] == list(range(1, len(order) + 1))
    assert set(positions) == {q.conversation_id for q in queued}
    for a, b in itertools.pairwise(order):
        assert (-a.priority, a.queued_at) <= (-b.priority, b.queued_at)


@PROPERTY
@given(scenarios)
def test_matching_does_not_depend_on_input_order(scenario: Scenario) -> None:
    forward = match_queue(scenario.queued, scenario.agents)
    backward = match_queue(scenario.queued[::-1], scenario.agents[::-1])

    assert [(m.conversation_id, m.agent_id) for m in forward] == [
        (m.conversation_id, m.agent_id) for m in backward
    ]


@PROPERTY
@given(scenarios)
def test_matching_is_the_greedy_ranking_of_each_conversation_in_queue_order(
    scenario: Scenario,
) -> None:
    """The plan is exactly: each conversation in queue order to the best-ranked agent by
    the loads the plan left so far (whatever shortcuts ``match_queue`` takes)."""
    state = {agent.agent_id: agent for agent in scenario.agents}
    expected = []
    for conversation in queue_order(scenario.queued):
        best = rank_agents(
            list(state.values()),
            conversation.requirement,
            sticky_agent_id=conversation.sticky_agent_id,
        ).best
        if best is not None:
            state[best.agent_id] = replace(
                best, load_units=best.load_units + conversation.requirement.units
            )
            expected.append((conversation.conversation_id, best.agent_id))

    assert [
        (m.conversation_id, m.agent_id) for m in match_queue(scenario.queued, scenario.agents)
    ] == expected


def test_nothing_to_match_without_agents_or_without_a_queue() -> None:
    waiting = QueuedConversation(uuid.UUID(int=1000), 0, NOW, Requirement(units=1))
    agent = AgentState(uuid.UUID(int=1), "online", 1, capacity_units=2, load_units=0)

    assert match_queue([waiting], []) == []
    assert match_queue([], [agent]) == []
    assert queue_positions([]) == {}


def test_a_freed_slot_goes_to_the_higher_priority_then_the_oldest() -> None:
    agent = AgentState(uuid.UUID(int=1), "online", 1, capacity_units=2, load_units=1)
    old = QueuedConversation(uuid.UUID(int=1001), 0, NOW - timedelta(minutes=9), Requirement(1))
    new = QueuedConversation(uuid.UUID(int=1002), 0, NOW, Requirement(1))
    urgent = QueuedConversation(uuid.UUID(int=1003), 2, NOW, Requirement(1))

    matches = match_queue([new, old, urgent], [agent])

    assert [m.conversation_id for m in matches] == [urgent.conversation_id]
    assert queue_positions([new, old, urgent]) == {
        urgent.conversation_id: 1,
        old.conversation_id: 2,
        new.conversation_id: 3,
    }
    assert [m.conversation_id for m in match_queue([new, old], [agent])] == [old.conversation_id]


# --- rank_agents -------------------------------------------------------------------------


@PROPERTY
@given(agent_lists, requirements, st.none() | st.integers(min_value=1, max_value=8))
def test_rank_agents_partitions_by_eligibility_and_orders_by_policy(
    agents: list[AgentState], requirement: Requirement, sticky: int | None
) -> None:
    sticky_id = None if sticky is None else uuid.UUID(int=sticky)

    ranking = rank_agents(agents, requirement, sticky_agent_id=sticky_id)

    eligible_ids = [a.agent_id for a in ranking.eligible]
    assert sorted(eligible_ids + list(ranking.excluded)) == sorted(a.agent_id for a in agents)
    for agent in agents:
        reason = exclusion_reason(agent, requirement)
        assert (agent.agent_id in eligible_ids) is (reason is None)
        assert ranking.excluded.get(agent.agent_id) == reason
    for agent in ranking.eligible:
        assert agent.status == "online"
        assert agent.tier >= requirement.tier
        assert agent.load_units + requirement.units <= agent.capacity_units + EPSILON

    sticky_eligible = sticky_id in eligible_ids
    assert ranking.rule == (RULE_STICKY if sticky_eligible else RULE_LEAST_LOADED)
    rest = list(ranking.eligible)
    if sticky_eligible:
        assert rest.pop(0).agent_id == sticky_id
    keys = [
        (
            a.tier - requirement.tier,
            a.load_share,
            a.last_assigned_at or datetime.min.replace(tzinfo=UTC),
        )
        for a in rest
    ]
    assert keys == sorted(keys)


# --- estimated wait and queue notices --------------------------------------------------


def test_estimate_wait_is_none_when_nobody_can_serve() -> None:
    assert estimate_wait_seconds(1, serving_agents=0, concurrency=3, avg_handle_seconds=300) is None


def test_estimate_wait_divides_the_line_by_the_serving_slots() -> None:
    assert estimate_wait_seconds(
        3, serving_agents=2, concurrency=3, avg_handle_seconds=300
    ) == pytest.approx(150)
    # Concurrency below one slot per agent still counts one slot.
    assert estimate_wait_seconds(
        2, serving_agents=1, concurrency=0.5, avg_handle_seconds=120
    ) == pytest.approx(240)


@PROPERTY
@given(
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=1, max_value=20),
    st.floats(min_value=0, max_value=10),
    st.floats(min_value=1, max_value=3600),
)
def test_estimate_wait_grows_with_the_position(
    position: int, agents: int, concurrency: float, handle: float
) -> None:
    here = estimate_wait_seconds(
        position, serving_agents=agents, concurrency=concurrency, avg_handle_seconds=handle
    )
    behind = estimate_wait_seconds(
        position + 1, serving_agents=agents, concurrency=concurrency, avg_handle_seconds=handle
    )

    assert here is not None
    assert behind is not None
    assert 0 < here < behind


def due(
    previous: QueueNoticeState | None,
    *,
    position: int,
    wait: float | None,
    after_seconds: float = 120,
) -> bool:
    return notice_is_due(
        previous,
        position=position,
        wait_seconds=wait,
        now=NOW + timedelta(seconds=after_seconds),
        min_interval_seconds=60,
        material_position_change=2,
        material_wait_change_ratio=0.25,
    )


SENT = QueueNoticeState(position=5, wait_seconds=400.0, sent_at=NOW)


def test_the_first_notice_is_always_due() -> None:
    assert due(None, position=5, wait=None, after_seconds=0)


def test_notices_are_throttled_even_when_much_changed() -> None:
    assert not due(SENT, position=1, wait=10.0, after_seconds=59)
    assert not due(SENT, position=1, wait=None, after_seconds=0)
    assert due(SENT, position=1, wait=10.0, after_seconds=60)


def test_a_material_position_change_is_due() -> None:
    assert due(SENT, position=3, wait=400.0)
    assert due(SENT, position=7, wait=400.0)
    assert not due(SENT, position=4, wait=400.0)
    assert not due(SENT, position=5, wait=400.0)


def test_a_material_wait_change_is_due() -> None:
    assert due(SENT, position=5, wait=300.0)  # -25 %
    assert due(SENT, position=5, wait=500.0)  # +25 %
    assert not due(SENT, position=5, wait=320.0)  # -20 %
    assert not due(SENT, position=4, wait=450.0)  # small changes of both


def test_a_wait_becoming_known_or_unknown_is_due() -> None:
    unknown = QueueNoticeState(position=5, wait_seconds=None, sent_at=NOW)

    assert due(SENT, position=5, wait=None)
    assert due(unknown, position=5, wait=400.0)
    assert not due(unknown, position=5, wait=None)
    assert not due(unknown, position=4, wait=None)


def test_a_wait_growing_from_zero_is_due() -> None:
    zero = QueueNoticeState(position=1, wait_seconds=0.0, sent_at=NOW)

    assert due(zero, position=1, wait=600.0)
    assert not due(zero, position=1, wait=0.0)
