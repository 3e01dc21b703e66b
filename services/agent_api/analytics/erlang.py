"""Erlang C staffing (pure): how many agents answer a target share within a target time.

Traffic ``A = arrivals per second * average handle seconds`` (Erlangs). With ``N > A``
agents, the chance a customer waits is Erlang C, computed here from the numerically
stable Erlang B recursion ``B(0) = 1, B(k) = A·B(k-1) / (k + A·B(k-1))`` and
``C = N·B / (N - A·(1 - B))``. The share answered within ``t`` seconds is
``1 - C·exp(-(N - A)·t / AHT)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_AGENTS = 10_000


def traffic_erlangs(arrivals_per_hour: float, handle_seconds: float) -> float:
    """Offered load in Erlangs."""
    if arrivals_per_hour < 0 or handle_seconds <= 0:
        raise ValueError("arrivals must be >= 0 and handle time > 0")
    return arrivals_per_hour * handle_seconds / 3600.0


def erlang_c(agents: int, traffic: float) -> float:
    """Probability that an arriving customer has to wait (1.0 when ``agents <= traffic``)."""
    if agents <= 0 or traffic <= 0:
        return 1.0 if agents <= 0 else 0.0
    if agents <= traffic:
        return 1.0
    blocking = 1.0
    for k in range(1, agents + 1):
        blocking = traffic * blocking / (k + traffic * blocking)
    return agents * blocking / (agents - traffic * (1.0 - blocking))


def service_level(
    agents: int, traffic: float, handle_seconds: float, target_seconds: float
) -> float:
    """Share of customers answered within ``target_seconds``."""
    if traffic <= 0:
        return 1.0
    if agents <= traffic:
        return 0.0
    waits = erlang_c(agents, traffic)
    return 1.0 - waits * math.exp(-(agents - traffic) * target_seconds / handle_seconds)


def average_speed_of_answer(agents: int, traffic: float, handle_seconds: float) -> float | None:
    """Mean wait in seconds (None when the queue grows without bound)."""
    if traffic <= 0:
        return 0.0
    if agents <= traffic:
        return None
    return erlang_c(agents, traffic) * handle_seconds / (agents - traffic)


@dataclass(frozen=True)
class Staffing:
    agents: int
    traffic_erlangs: float
    service_level: float
    probability_of_waiting: float
    average_speed_of_answer_seconds: float | None
    occupancy: float


def agents_needed(
    arrivals_per_hour: float,
    handle_seconds: float,
    *,
    target_share: float,
    target_seconds: float,
) -> Staffing:
    """The fewest agents whose service level reaches ``target_share`` within
    ``target_seconds`` (0 agents when nobody arrives)."""
    if not 0 < target_share < 1:
        raise ValueError("target_share must be in (0, 1)")
    if target_seconds < 0:
        raise ValueError("target_seconds must be >= 0")
    traffic = traffic_erlangs(arrivals_per_hour, handle_seconds)
    if traffic == 0:
        return Staffing(0, 0.0, 1.0, 0.0, 0.0, 0.0)
    agents = max(1, math.floor(traffic) + 1)
    while agents <= MAX_AGENTS:
        level = service_level(agents, traffic, handle_seconds, target_seconds)
        if level >= target_share:
            return Staffing(
                agents=agents,
                traffic_erlangs=traffic,
                service_level=level,
                probability_of_waiting=erlang_c(agents, traffic),
                average_speed_of_answer_seconds=average_speed_of_answer(
                    agents, traffic, handle_seconds
                ),
                occupancy=traffic / agents,
            )
        agents += 1
    raise ValueError(f"more than {MAX_AGENTS} agents needed; check the inputs")
