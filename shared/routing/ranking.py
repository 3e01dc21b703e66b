"""Assignment policy as pure functions.

Order of decision: the sticky owner (the customer's previous agent, on any channel,
within the window) if eligible; otherwise eligible agents by tier distance (an agent of
exactly the required tier first), then least loaded (share of capacity), then longest
idle. Eligibility: online, tier at least the required tier, every required skill, the
language if one is required, the team if one is required, and room for the channel's
units. Queue matching serves conversations by priority, then age.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any

_NEVER = datetime.min.replace(tzinfo=UTC)
_EPSILON = 1e-9

RULE_STICKY = "sticky_owner"
RULE_LEAST_LOADED = "tier_then_least_loaded_then_longest_idle"


@lru_cache(maxsize=65536)
def _id_text(agent_id: uuid.UUID) -> str:
    """An agent id as explanations write it (the same few hundred ids, over and over)."""
    return str(agent_id)


@dataclass(frozen=True)
class AgentState:
    agent_id: uuid.UUID
    status: str
    tier: int
    capacity_units: float
    load_units: float
    last_assigned_at: datetime | None = None
    skills: frozenset[str] = frozenset()
    languages: frozenset[str] = frozenset()
    team_ids: frozenset[uuid.UUID] = frozenset()

    @property
    def load_share(self) -> float:
        return self.load_units / self.capacity_units if self.capacity_units > 0 else float("inf")

    @cached_property
    def candidate(self) -> dict[str, Any]:
        """The agent's entry in an explanation's candidates. Built once per state (a
        state is immutable; a new load is a new state) and shared by the explanations
        of every conversation it was a candidate for: never mutate it."""
        return {
            "agent_id": _id_text(self.agent_id),
            "tier": self.tier,
            "load_units": self.load_units,
            "capacity_units": self.capacity_units,
            "load_share": round(self.load_share, 4),
            "last_assigned_at": self.last_assigned_at.isoformat()
            if self.last_assigned_at
            else None,
        }


@dataclass(frozen=True)
class Requirement:
    units: float
    tier: int = 1
    skills: frozenset[str] = frozenset()
    language: str | None = None
    team_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Ranking:
    eligible: tuple[AgentState, ...]
    excluded: dict[uuid.UUID, str]
    rule: str
    sticky_agent_id: uuid.UUID | None = None

    @property
    def best(self) -> AgentState | None:
        return self.eligible[0] if self.eligible else None

    def explanation(self, chosen: uuid.UUID | None, requirement: Requirement) -> dict[str, Any]:
        return {
            "rule": self.rule if chosen else "queued_no_eligible_agent",
            "chosen_agent_id": str(chosen) if chosen else None,
            "sticky_agent_id": str(self.sticky_agent_id) if self.sticky_agent_id else None,
            "requirement": {
                "tier": requirement.tier,
                "units": requirement.units,
                "skills": sorted(requirement.skills),
                "language": requirement.language,
                "team_id": str(requirement.team_id) if requirement.team_id else None,
            },
            "candidates": [a.candidate for a in self.eligible],
            "excluded": {_id_text(agent_id): why for agent_id, why in self.excluded.items()},
        }


def exclusion_reason(agent: AgentState, requirement: Requirement) -> str | None:
    """Why ``agent`` cannot take a conversation with ``requirement``; None if it can."""
    if agent.status != "online":
        return f"status {agent.status}"
    if agent.tier < requirement.tier:
        return f"tier {agent.tier} below required {requirement.tier}"
    missing = requirement.skills - agent.skills
    if missing:
        return f"missing skills {sorted(missing)}"
    if requirement.language is not None and requirement.language not in agent.languages:
        return f"does not speak {requirement.language}"
    if requirement.team_id is not None and requirement.team_id not in agent.team_ids:
        return "not in the team"
    if agent.load_units + requirement.units > agent.capacity_units + _EPSILON:
        return "no free capacity"
    return None


def rank_agents(
    agents: list[AgentState],
    requirement: Requirement,
    *,
    sticky_agent_id: uuid.UUID | None = None,
) -> Ranking:
    eligible: list[AgentState] = []
    excluded: dict[uuid.UUID, str] = {}
    for agent in agents:
        reason = exclusion_reason(agent, requirement)
        if reason is None:
            eligible.append(agent)
        else:
            excluded[agent.agent_id] = reason
    eligible.sort(
        key=lambda a: (
            a.tier - requirement.tier,
            a.load_share,
            a.last_assigned_at or _NEVER,
            a.agent_id,  # orders as its text does (fixed-width lowercase hex)
        )
    )
    rule = RULE_LEAST_LOADED
    sticky = next((a for a in eligible if a.agent_id == sticky_agent_id), None)
    if sticky is not None:
        eligible.remove(sticky)
        eligible.insert(0, sticky)
        rule = RULE_STICKY
    return Ranking(tuple(eligible), excluded, rule, sticky_agent_id)


@dataclass(frozen=True)
class QueuedConversation:
    conversation_id: uuid.UUID
    priority: int
    queued_at: datetime
    requirement: Requirement
    sticky_agent_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Match:
    conversation_id: uuid.UUID
    agent_id: uuid.UUID
    ranking: Ranking
    requirement: Requirement


def queue_order(queued: list[QueuedConversation]) -> list[QueuedConversation]:
    """Priority first (higher first), then age (older first)."""
    return sorted(queued, key=lambda q: (-q.priority, q.queued_at, str(q.conversation_id)))


def match_queue(queued: list[QueuedConversation], agents: list[AgentState]) -> list[Match]:
    """Assign waiting conversations to agents with room, in queue order, greedily.

    Loads are updated as the plan grows, so the plan never exceeds any capacity.
    """
    state = {agent.agent_id: agent for agent in agents}
    matches: list[Match] = []
    room = _most_room(state.values())
    for conversation in queue_order(queued):
        if conversation.requirement.units > room + 1e3 * _EPSILON:
            # Nobody has room for it (with a margin over rank_agents' own tolerance, so
            # rounding never skips one it would take): no ranking can find anyone.
            continue
        ranking = rank_agents(
            list(state.values()),
            conversation.requirement,
            sticky_agent_id=conversation.sticky_agent_id,
        )
        best = ranking.best
        if best is None:
            continue
        state[best.agent_id] = replace(
            best, load_units=best.load_units + conversation.requirement.units
        )
        room = _most_room(state.values())
        matches.append(
            Match(conversation.conversation_id, best.agent_id, ranking, conversation.requirement)
        )
    return matches


def _most_room(agents: Iterable[AgentState]) -> float:
    """The most free capacity any online agent has (what a conversation can need at most
    to be taken by anyone)."""
    return max(
        (a.capacity_units - a.load_units for a in agents if a.status == "online"),
        default=float("-inf"),
    )


def queue_positions(queued: list[QueuedConversation]) -> dict[uuid.UUID, int]:
    """1-based position of each conversation in its workspace queue order."""
    return {q.conversation_id: i for i, q in enumerate(queue_order(queued), start=1)}


def estimate_wait_seconds(
    position: int, *, serving_agents: int, concurrency: float, avg_handle_seconds: float
) -> float | None:
    """Expected wait for the ``position``-th in line; None when nobody can serve."""
    if serving_agents <= 0:
        return None
    slots = serving_agents * max(concurrency, 1.0)
    return position * avg_handle_seconds / slots


@dataclass(frozen=True)
class QueueNoticeState:
    position: int
    wait_seconds: float | None
    sent_at: datetime


def notice_is_due(
    previous: QueueNoticeState | None,
    *,
    position: int,
    wait_seconds: float | None,
    now: datetime,
    min_interval_seconds: float,
    material_position_change: int,
    material_wait_change_ratio: float,
) -> bool:
    """Tell the customer once, then again only when it changed materially (throttled)."""
    if previous is None:
        return True
    if (now - previous.sent_at).total_seconds() < min_interval_seconds:
        return False
    if abs(previous.position - position) >= material_position_change:
        return True
    if (previous.wait_seconds is None) != (wait_seconds is None):
        return True
    if previous.wait_seconds is not None and wait_seconds is not None:
        if previous.wait_seconds == 0:
            return wait_seconds > 0  # any growth from zero is an infinite ratio
        change = abs(wait_seconds - previous.wait_seconds) / previous.wait_seconds
        return change >= material_wait_change_ratio
    return False


@dataclass(frozen=True)
class IntakeDecision:
    tier: int = 1
    priority: int = 0
    team: str | None = None
    skills: frozenset[str] = frozenset()
    matched_rules: tuple[str, ...] = field(default=())
    sentiment: float | None = None
