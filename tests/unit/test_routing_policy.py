"""The routing policy document: safe defaults, specific SLA targets, errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.events import Channel
from shared.routing.policy import DEFAULT_POLICY, RoutingPolicy


def error_locs(document: dict[str, Any]) -> list[tuple[int | str, ...]]:
    with pytest.raises(ValidationError) as caught:
        RoutingPolicy.model_validate(document)
    return [tuple(error["loc"]) for error in caught.value.errors()]


def hours(**overrides: Any) -> dict[str, Any]:
    return {"business_hours": {"timezone": "Europe/Berlin", **overrides}}


def test_an_empty_document_is_the_valid_default() -> None:
    policy = RoutingPolicy.model_validate({})

    assert policy == DEFAULT_POLICY
    assert policy.business_hours is None
    assert policy.weight(Channel.EMAIL) == 0.5
    assert policy.weight(Channel.WEBCHAT) == 1.0
    assert policy.sla_seconds(tier=1, channel=Channel.WEBCHAT, priority=0) == 300
    assert policy.sla_seconds(tier=1, channel=Channel.EMAIL, priority=0) == 2 * 3600
    assert RoutingPolicy.model_validate(policy.model_dump(mode="json")) == policy


def test_default_business_hours_are_valid_weekdays_nine_to_five() -> None:
    policy = RoutingPolicy.model_validate({"business_hours": {}})

    assert policy.business_hours is not None
    assert sorted(policy.business_hours.weekly) == ["fri", "mon", "thu", "tue", "wed"]
    assert policy.business_hours.describe().startswith("Mon 09:00-17:00; Tue 09:00-17:00")


def test_a_full_document_round_trips() -> None:
    document = {
        "channel_weights": {"webchat": 1, "email": 0.25, "sms": 1, "social": 2},
        "sticky_owner": {"enabled": False, "window_hours": 24},
        "sla_targets": [{"seconds": 60, "tier": 2, "channel": "sms", "min_priority": 5}],
        "intake_rules": [
            {
                "name": "angry",
                "when": {"keywords_any": ["refund"], "sentiment_below": -0.5},
                "then": {"tier": 2, "priority": 5, "team": "billing", "skills": ["refunds"]},
            }
        ],
        "business_hours": {
            "timezone": "America/New_York",
            "weekly": {"sat": [{"start": "10:00", "end": "14:00"}]},
            "holidays": ["2026-12-25"],
        },
        "offline_grace_seconds": 0,
    }

    policy = RoutingPolicy.model_validate(document)

    assert policy.weight(Channel.EMAIL) == 0.25
    assert policy.intake_rules[0].then.skills == ["refunds"]
    assert RoutingPolicy.model_validate(policy.model_dump(mode="json")) == policy


def test_sla_seconds_picks_the_most_specific_matching_target() -> None:
    policy = RoutingPolicy.model_validate(
        {
            "sla_targets": [
                {"seconds": 600},
                {"seconds": 3600, "channel": "email"},
                {"seconds": 240, "tier": 2},
                {"seconds": 120, "tier": 2, "channel": "webchat"},
                {"seconds": 30, "tier": 2, "channel": "webchat", "min_priority": 5},
                {"seconds": 45, "min_priority": 8},
            ]
        }
    )

    def sla(tier: int, channel: Channel, priority: int = 0) -> int:
        return policy.sla_seconds(tier=tier, channel=channel, priority=priority)

    assert sla(1, Channel.WEBCHAT) == 600  # only the catch-all matches
    assert sla(1, Channel.EMAIL) == 3600
    assert sla(2, Channel.SMS) == 240
    assert sla(2, Channel.WEBCHAT) == 120
    assert sla(2, Channel.WEBCHAT, priority=4) == 120  # below min_priority
    assert sla(2, Channel.WEBCHAT, priority=5) == 30
    assert sla(3, Channel.SMS, priority=9) == 45
    # Equally specific matches: the first listed wins, the order is stable.
    assert sla(2, Channel.SMS, priority=9) == 240


def test_sla_seconds_falls_back_to_300_when_nothing_matches() -> None:
    policy = RoutingPolicy.model_validate({"sla_targets": [{"seconds": 60, "tier": 3}]})

    assert policy.sla_seconds(tier=1, channel=Channel.SMS, priority=0) == 300
    assert policy.sla_seconds(tier=3, channel=Channel.SMS, priority=0) == 60


@pytest.mark.parametrize(
    ("document", "loc"),
    [
        pytest.param(
            hours(weekly={"monday": [{"start": "09:00", "end": "17:00"}]}),
            ("business_hours", "weekly"),
            id="unknown-weekday",
        ),
        pytest.param(
            hours(weekly={"mon": [{"start": "9:00", "end": "17:00"}]}),
            ("business_hours", "weekly", "mon", 0, "start"),
            id="bad-hhmm-start",
        ),
        pytest.param(
            hours(weekly={"tue": [{"start": "09:00", "end": "17:60"}]}),
            ("business_hours", "weekly", "tue", 0, "end"),
            id="bad-hhmm-minutes",
        ),
        pytest.param(
            hours(weekly={"wed": [{"start": "09:00", "end": "25:00"}]}),
            ("business_hours", "weekly", "wed", 0, "end"),
            id="bad-hhmm-hour",
        ),
        pytest.param(
            hours(weekly={"thu": [{"start": "24:00", "end": "24:00"}]}),
            ("business_hours", "weekly", "thu", 0, "start"),
            id="start-at-24",
        ),
        pytest.param(
            hours(
                weekly={
                    "fri": [{"start": "09:00", "end": "12:00"}, {"start": "17:00", "end": "08:00"}]
                }
            ),
            ("business_hours", "weekly", "fri", 1),
            id="end-before-start",
        ),
        pytest.param(
            hours(weekly={"sat": [{"start": "10:00", "end": "10:00"}]}),
            ("business_hours", "weekly", "sat", 0),
            id="empty-window",
        ),
        pytest.param(
            hours(weekly={"sun": [{"start": "10:00", "end": "12:00", "lunch": True}]}),
            ("business_hours", "weekly", "sun", 0, "lunch"),
            id="unknown-window-field",
        ),
        pytest.param(
            {"business_hours": {"timezone": "Mars/Olympus_Mons"}},
            ("business_hours", "timezone"),
            id="unknown-time-zone",
        ),
        pytest.param(
            hours(holidays=["2026-02-30"]),
            ("business_hours", "holidays", 0),
            id="bad-holiday-date",
        ),
        pytest.param(
            {"channel_weights": {"webchat": 1, "email": -0.5}},
            ("channel_weights",),
            id="negative-weight",
        ),
        pytest.param(
            {"channel_weights": {"email": 0}},
            ("channel_weights",),
            id="zero-weight",
        ),
        pytest.param(
            {"channel_weights": {"fax": 1}},
            ("channel_weights", "fax", "[key]"),
            id="unknown-channel",
        ),
        pytest.param(
            {
                "intake_rules": [
                    {"name": "ok", "when": {}, "then": {}},
                    {"name": "sad", "when": {"sentiment_below": -1.5}, "then": {"tier": 2}},
                ]
            },
            ("intake_rules", 1, "when", "sentiment_below"),
            id="sentiment-below-range",
        ),
        pytest.param(
            {"intake_rules": [{"name": "up", "when": {}, "then": {"tier": 4}}]},
            ("intake_rules", 0, "then", "tier"),
            id="tier-out-of-range",
        ),
        pytest.param(
            {"intake_rules": [{"name": "", "when": {}, "then": {}}]},
            ("intake_rules", 0, "name"),
            id="empty-rule-name",
        ),
        pytest.param(
            {"intake_rules": [{"name": "x", "when": {"keywords_any": [""]}, "then": {}}]},
            ("intake_rules", 0, "when", "keywords_any", 0),
            id="empty-keyword",
        ),
        pytest.param(
            {"intake_rules": [{"name": "x", "when": {"channels": ["pigeon"]}, "then": {}}]},
            ("intake_rules", 0, "when", "channels", 0),
            id="unknown-rule-channel",
        ),
        pytest.param(
            {"sla_targets": [{"seconds": 0}]},
            ("sla_targets", 0, "seconds"),
            id="zero-sla",
        ),
        pytest.param(
            {"sla_targets": [{"seconds": 60, "tier": 0}]},
            ("sla_targets", 0, "tier"),
            id="sla-tier-range",
        ),
        pytest.param(
            {"sticky_owner": {"window_hours": -1}},
            ("sticky_owner", "window_hours"),
            id="negative-sticky-window",
        ),
        pytest.param(
            {"offline_grace_seconds": -5},
            ("offline_grace_seconds",),
            id="negative-grace",
        ),
        pytest.param(
            {"queue_notices": {"material_position_change": 0}},
            ("queue_notices", "material_position_change"),
            id="position-change-zero",
        ),
        pytest.param(
            {"default_handle_seconds": 0},
            ("default_handle_seconds",),
            id="zero-handle-time",
        ),
        pytest.param(
            {"channel_weight": {"email": 0.5}},
            ("channel_weight",),
            id="unknown-top-level-field",
        ),
    ],
)
def test_invalid_documents_name_the_bad_field(
    document: dict[str, Any], loc: tuple[int | str, ...]
) -> None:
    assert error_locs(document) == [loc]


def test_every_bad_field_is_reported_at_once() -> None:
    locs = error_locs(
        {
            "offline_grace_seconds": -1,
            "business_hours": {"timezone": "Nowhere/City"},
            "surprise": 1,
        }
    )

    assert sorted(locs, key=str) == sorted(
        [("offline_grace_seconds",), ("business_hours", "timezone"), ("surprise",)], key=str
    )


def test_error_messages_say_what_is_wrong() -> None:
    with pytest.raises(ValidationError) as caught:
        RoutingPolicy.model_validate(hours(weekly={"funday": [], "mon": []}))
    assert "unknown weekday(s) ['funday']" in caught.value.errors()[0]["msg"]

    with pytest.raises(ValidationError) as caught:
        RoutingPolicy.model_validate(hours(weekly={"mon": [{"start": "24:00", "end": "24:00"}]}))
    assert "cannot start at 24:00" in caught.value.errors()[0]["msg"]

    with pytest.raises(ValidationError) as caught:
        RoutingPolicy.model_validate(hours(weekly={"mon": [{"start": "17:00", "end": "09:00"}]}))
    assert "start must be before end" in caught.value.errors()[0]["msg"]

    with pytest.raises(ValidationError) as caught:
        RoutingPolicy.model_validate({"business_hours": {"timezone": "Nowhere/City"}})
    assert "unknown time zone 'Nowhere/City'" in caught.value.errors()[0]["msg"]


def test_a_window_may_end_at_midnight_as_24_00() -> None:
    policy = RoutingPolicy.model_validate(
        hours(weekly={"sat": [{"start": "00:00", "end": "24:00"}]})
    )

    assert policy.business_hours is not None
    assert policy.business_hours.describe() == "Sat 00:00-24:00 (Europe/Berlin)"


def test_the_policy_is_immutable() -> None:
    with pytest.raises(ValidationError):
        DEFAULT_POLICY.offline_grace_seconds = 5  # type: ignore[misc]
