"""The analytics' pure arithmetic against independent references."""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.agent_api.analytics.figures import (
    hour_of_week,
    percentile,
    slot_occurrences,
    top_keywords,
)

UTC_ZONE = ZoneInfo("UTC")


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=2, max_size=200))
def test_percentiles_match_the_statistics_module(values: list[float]) -> None:
    ordered = sorted(values)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    for share, cut in ((0.5, cuts[49]), (0.9, cuts[89]), (0.99, cuts[98])):
        assert percentile(ordered, share) == pytest.approx(cut, rel=1e-9, abs=1e-6)


def test_one_value_is_every_percentile_and_none_is_an_error() -> None:
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_hours_of_the_week_in_a_time_zone() -> None:
    monday_midnight_utc = datetime(2026, 1, 5, tzinfo=UTC)
    assert hour_of_week(monday_midnight_utc, UTC_ZONE) == 0
    assert hour_of_week(monday_midnight_utc - timedelta(minutes=1), UTC_ZONE) == 167
    # 00:00 UTC on Monday is 01:00 in Berlin (winter), 19:00 on Sunday in New York.
    assert hour_of_week(monday_midnight_utc, ZoneInfo("Europe/Berlin")) == 1
    assert hour_of_week(monday_midnight_utc, ZoneInfo("America/New_York")) == 6 * 24 + 19
    assert hour_of_week(datetime(2026, 1, 5, 9, 30), UTC_ZONE) == 9  # naive is UTC


def test_slot_hours_of_a_window() -> None:
    start = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
    hours = slot_occurrences(start, start + timedelta(days=14), UTC_ZONE)
    assert sum(hours) == pytest.approx(14 * 24)
    assert hours[10] == pytest.approx(2.0)  # half of the first, half of the last, one whole
    assert hours[11] == pytest.approx(2.0)
    assert hours[9] == pytest.approx(2.0)
    rng = random.Random(5)  # noqa: S311
    for _ in range(20):
        a = start + timedelta(minutes=rng.randrange(10_000))
        b = a + timedelta(minutes=rng.randrange(1, 30_000))
        assert sum(slot_occurrences(a, b, UTC_ZONE)) == pytest.approx(
            (b - a).total_seconds() / 3600
        )


def test_keywords_count_messages_not_repeats_and_skip_small_words() -> None:
    texts = [
        "Refund refund REFUND please",
        "Where is my refund? The invoice is wrong.",
        "invoice",
        "I can't log in",
        "Das Paket ist nicht angekommen",
    ]
    top = dict(top_keywords(texts, 3))
    assert top == {"refund": 2, "invoice": 2, "angekommen": 1}
    assert "the" not in dict(top_keywords(texts, 100))
    assert "can't" not in dict(top_keywords(texts, 100))
