"""The wall's pure figures: hourly volume buckets and SLA breach summaries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.agent_api.supervisor.service import OpenConversation, sla_summary, volume_by_hour

NOW = datetime(2026, 11, 22, 15, 40, tzinfo=UTC)


def test_volume_counts_each_of_the_last_24_hours_oldest_first() -> None:
    created = [
        NOW,
        NOW - timedelta(minutes=39),  # same hour (15:01)
        NOW - timedelta(minutes=41),  # 14:59
        NOW - timedelta(hours=23, minutes=40),  # 16:00 yesterday: the first bucket
        NOW - timedelta(hours=23, minutes=41),  # 15:59 yesterday: too old
    ]
    hours = volume_by_hour(created, now=NOW)
    assert len(hours) == 24
    assert hours[0].hour_start == datetime(2026, 11, 21, 16, tzinfo=UTC)
    assert hours[-1].hour_start == datetime(2026, 11, 22, 15, tzinfo=UTC)
    assert hours[0].conversations == 1
    assert hours[-2].conversations == 1
    assert hours[-1].conversations == 2
    assert sum(h.conversations for h in hours) == 4


def test_volume_of_a_quiet_day_is_24_zeros() -> None:
    hours = volume_by_hour([], now=NOW)
    assert [h.conversations for h in hours] == [0] * 24


def _open(due: datetime) -> OpenConversation:
    return OpenConversation(uuid.uuid4(), "email", "queued", 1, due)


def test_sla_summary_counts_breaches_and_soon_due_and_keeps_the_worst() -> None:
    rows = [_open(NOW - timedelta(minutes=m)) for m in range(1, 14)]
    rows += [_open(NOW + timedelta(minutes=10)), _open(NOW + timedelta(minutes=20))]
    summary = sla_summary(rows, now=NOW, at_risk_seconds=15 * 60, keep=10)
    assert summary.breached == 13
    assert summary.at_risk == 1
    assert len(summary.most_overdue) == 10
    assert summary.most_overdue[0].overdue_seconds == 13 * 60
    overdue = [b.overdue_seconds for b in summary.most_overdue]
    assert overdue == sorted(overdue, reverse=True)
