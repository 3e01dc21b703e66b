"""Erlang C staffing against the textbook formula, written independently here."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from services.agent_api.analytics.erlang import (
    agents_needed,
    average_speed_of_answer,
    erlang_c,
    service_level,
    traffic_erlangs,
)


def textbook_waiting_probability(agents: int, traffic: Fraction) -> float:
    """P(wait) = (A^N/N! · N/(N-A)) / (Σ_{k<N} A^k/k! + A^N/N! · N/(N-A)), exactly."""
    head = sum((traffic**k / math.factorial(k) for k in range(agents)), Fraction(0))
    tail = traffic**agents / math.factorial(agents) * agents / (agents - traffic)
    return float(tail / (head + tail))


def textbook_service_level(agents: int, traffic: Fraction, aht: float, target: float) -> float:
    waits = textbook_waiting_probability(agents, traffic)
    return 1 - waits * math.exp(-(agents - float(traffic)) * target / aht)


def test_the_classic_example_100_chats_an_hour_3_minutes_80_percent_in_20_seconds() -> None:
    traffic = traffic_erlangs(100, 180)
    assert traffic == pytest.approx(5.0)

    # The fewest agents meeting 80 % in 20 s, found here by walking the textbook formula.
    expected = next(
        n for n in range(6, 50) if textbook_service_level(n, Fraction(5), 180, 20) >= 0.8
    )
    staffing = agents_needed(100, 180, target_share=0.8, target_seconds=20)

    assert staffing.agents == expected == 8
    assert staffing.traffic_erlangs == pytest.approx(5.0)
    assert staffing.service_level == pytest.approx(textbook_service_level(8, Fraction(5), 180, 20))
    # The published figures for this example: P(wait) ≈ 16.7 %, SL ≈ 88.0 %, ASA ≈ 10 s.
    assert staffing.probability_of_waiting == pytest.approx(0.1673, abs=5e-4)
    assert staffing.service_level == pytest.approx(0.8801, abs=5e-4)
    assert staffing.average_speed_of_answer_seconds == pytest.approx(0.16727 * 180 / 3, rel=1e-3)
    assert staffing.occupancy == pytest.approx(5 / 8)
    # One agent fewer misses the target.
    assert service_level(7, 5.0, 180, 20) < 0.8


@pytest.mark.parametrize(
    ("agents", "traffic"),
    [(1, Fraction(1, 2)), (3, Fraction(2)), (12, Fraction(19, 2)), (40, Fraction(35))],
)
def test_erlang_c_equals_the_factorial_form(agents: int, traffic: Fraction) -> None:
    assert erlang_c(agents, float(traffic)) == pytest.approx(
        textbook_waiting_probability(agents, traffic), rel=1e-9
    )


def test_an_overloaded_queue_always_waits() -> None:
    assert erlang_c(5, 5.0) == 1.0
    assert service_level(4, 5.0, 180, 20) == 0.0
    assert average_speed_of_answer(5, 5.0, 180) is None


def test_no_arrivals_need_no_agents() -> None:
    staffing = agents_needed(0, 180, target_share=0.8, target_seconds=120)
    assert staffing.agents == 0
    assert staffing.service_level == 1.0


def test_a_stricter_target_needs_at_least_as_many_agents() -> None:
    loose = agents_needed(100, 180, target_share=0.8, target_seconds=120)
    strict = agents_needed(100, 180, target_share=0.95, target_seconds=10)
    assert strict.agents > loose.agents


@pytest.mark.parametrize(
    ("share", "seconds", "aht"), [(0.0, 20, 180), (1.0, 20, 180), (0.8, -1, 180), (0.8, 20, 0)]
)
def test_bad_inputs_are_refused(share: float, seconds: float, aht: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        agents_needed(100, aht, target_share=share, target_seconds=seconds)
