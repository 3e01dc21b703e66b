"""Assignment policy as pure functions: which agents may take a conversation, in order.

For now: online agents with room for the conversation's units, least loaded first
(by share of capacity), ties to the longest idle. Sticky owners, tiers, skills and
languages come with the routing engine.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class AgentCandidate:
    agent_id: uuid.UUID
    status: str
    capacity_units: float
    load_units: float
    last_assigned_at: datetime | None


@dataclass(frozen=True)
class Ranking:
    """Eligible agents best first, the excluded with their reason, and the rule used."""

    eligible: tuple[AgentCandidate, ...]
    excluded: dict[uuid.UUID, str]
    rule: str

    def explanation(self, chosen: uuid.UUID | None) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "chosen_agent_id": str(chosen) if chosen else None,
            "candidates": [
                {
                    "agent_id": str(c.agent_id),
                    "load_units": c.load_units,
                    "capacity_units": c.capacity_units,
                    "load_share": round(load_share(c), 4),
                }
                for c in self.eligible
            ],
            "excluded": {str(agent_id): why for agent_id, why in self.excluded.items()},
        }


def load_share(candidate: AgentCandidate) -> float:
    if candidate.capacity_units <= 0:
        return float("inf")
    return candidate.load_units / candidate.capacity_units


def rank_agents(candidates: list[AgentCandidate], *, units: float) -> Ranking:
    eligible: list[AgentCandidate] = []
    excluded: dict[uuid.UUID, str] = {}
    for candidate in candidates:
        if candidate.status != "online":
            excluded[candidate.agent_id] = f"status {candidate.status}"
        elif candidate.load_units + units > candidate.capacity_units + 1e-9:
            excluded[candidate.agent_id] = "no free capacity"
        else:
            eligible.append(candidate)
    eligible.sort(key=lambda c: (load_share(c), c.last_assigned_at or _NEVER, str(c.agent_id)))
    return Ranking(
        eligible=tuple(eligible), excluded=excluded, rule="least_loaded_then_longest_idle"
    )
