"""Intake rules: keywords, VIP, channel, priority and sentiment decide tier and priority."""

from __future__ import annotations

from typing import Any

import pytest

from shared.events import Channel
from shared.routing.intake import SentimentScorer, decide_intake, vader_compound
from shared.routing.policy import IntakeRule
from shared.routing.ranking import IntakeDecision

ANGRY = "This is terrible, I am furious and your service is awful. I hate this!"
HAPPY = "Thank you so much, you are wonderful and the product is great!"


def rule(name: str, then: dict[str, Any] | None = None, **when: Any) -> IntakeRule:
    return IntakeRule.model_validate({"name": name, "when": when, "then": then or {"tier": 2}})


class Scorer:
    """A sentiment scorer that returns a fixed score and counts its calls."""

    def __init__(self, score: float) -> None:
        self.score = score
        self.calls: list[str] = []

    def __call__(self, text: str) -> float:
        self.calls.append(text)
        return self.score


def never_scored(text: str) -> float:
    raise AssertionError(f"sentiment scored for {text!r} although no rule needs it")


def decide(
    rules: list[IntakeRule],
    text: str = "hello",
    *,
    vip: bool = False,
    channel: Channel = Channel.WEBCHAT,
    priority: int = 0,
    scorer: SentimentScorer = never_scored,
) -> IntakeDecision:
    return decide_intake(
        rules, text=text, vip=vip, channel=channel, priority=priority, score_sentiment=scorer
    )


def test_no_rules_keep_the_defaults() -> None:
    decision = decide([], priority=3)

    assert (decision.tier, decision.priority, decision.team) == (1, 3, None)
    assert decision.skills == frozenset()
    assert decision.matched_rules == ()
    assert decision.sentiment is None


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("I want a REFUND now", True),
        ("Refund.", True),
        ("refund", True),
        ("(refund)", True),
        ("I'd like to cancel my order", True),
        ("please CANCEL MY ORDER", True),
        ("refunds are slow", False),
        ("nonrefundable ticket", False),
        ("cancel my orders", False),
        ("cancel  my order", False),
        ("", False),
    ],
)
def test_keywords_match_whole_words_case_insensitively(text: str, hit: bool) -> None:
    rules = [rule("money", keywords_any=["Refund", "cancel my order"])]

    decision = decide(rules, text)

    assert decision.matched_rules == (("money",) if hit else ())
    assert decision.tier == (2 if hit else 1)


def test_keywords_with_regex_characters_are_literal() -> None:
    rules = [rule("plus", keywords_any=["c++", "a.b"])]

    assert decide(rules, "my C++ build fails").matched_rules == ("plus",)
    assert decide(rules, "axb").matched_rules == ()
    assert decide(rules, "see a.b please").matched_rules == ("plus",)


def test_vip_condition() -> None:
    rules = [rule("vip", vip=True), rule("regular", {"priority": 1}, vip=False)]

    assert decide(rules, vip=True).matched_rules == ("vip",)
    assert decide(rules, vip=False).matched_rules == ("regular",)


def test_channel_condition() -> None:
    rules = [rule("phones", channels=["sms", "social"])]

    assert decide(rules, channel=Channel.SMS).matched_rules == ("phones",)
    assert decide(rules, channel=Channel.SOCIAL).matched_rules == ("phones",)
    assert decide(rules, channel=Channel.EMAIL).matched_rules == ()


def test_min_priority_condition() -> None:
    rules = [rule("urgent", {"tier": 3}, min_priority=5)]

    assert decide(rules, priority=4).tier == 1
    assert decide(rules, priority=5).tier == 3
    assert decide(rules, priority=9).tier == 3


def test_all_conditions_of_a_rule_must_hold() -> None:
    rules = [rule("vip-refund", {"tier": 3}, vip=True, keywords_any=["refund"], channels=["email"])]

    assert decide(rules, "refund", vip=True, channel=Channel.EMAIL).tier == 3
    assert decide(rules, "refund", vip=False, channel=Channel.EMAIL).tier == 1
    assert decide(rules, "hello", vip=True, channel=Channel.EMAIL).tier == 1
    assert decide(rules, "refund", vip=True, channel=Channel.SMS).tier == 1


def test_an_empty_condition_always_holds() -> None:
    decision = decide([rule("everyone", {"skills": ["triage"]})])

    assert decision.matched_rules == ("everyone",)
    assert decision.skills == frozenset({"triage"})


def test_sentiment_below_with_an_injected_scorer() -> None:
    rules = [rule("unhappy", {"tier": 2, "priority": 4}, sentiment_below=-0.5)]

    sad, neutral, edge = Scorer(-0.8), Scorer(0.1), Scorer(-0.5)

    assert decide(rules, "x", scorer=sad).tier == 2
    assert decide(rules, "x", scorer=sad).sentiment == -0.8
    assert decide(rules, "x", scorer=neutral).tier == 1
    assert decide(rules, "x", scorer=neutral).sentiment == 0.1
    # "below" is strict: exactly the threshold does not match.
    assert decide(rules, "x", scorer=edge).matched_rules == ()
    assert sad.calls == ["x", "x"]


def test_sentiment_below_with_the_real_vader_scorer() -> None:
    rules = [rule("unhappy", {"tier": 2}, sentiment_below=-0.3)]

    angry = decide(rules, ANGRY, scorer=vader_compound)
    happy = decide(rules, HAPPY, scorer=vader_compound)

    assert angry.matched_rules == ("unhappy",)
    assert angry.tier == 2
    assert angry.sentiment is not None
    assert angry.sentiment < -0.5
    assert happy.matched_rules == ()
    assert happy.tier == 1
    assert happy.sentiment is not None
    assert happy.sentiment > 0.5


def test_vader_is_the_default_scorer() -> None:
    rules = [rule("unhappy", sentiment_below=-0.3)]

    decision = decide_intake(rules, text=ANGRY, vip=False, channel=Channel.SMS)

    assert decision.matched_rules == ("unhappy",)
    assert -1 <= vader_compound(HAPPY) <= 1


def test_the_scorer_is_not_called_when_no_rule_needs_sentiment() -> None:
    rules = [
        rule("refund", keywords_any=["refund"]),
        rule("vip", {"tier": 3}, vip=True),
        rule("sms", {"priority": 2}, channels=["sms"]),
    ]

    decision = decide(rules, "refund please", vip=True, channel=Channel.SMS, scorer=never_scored)

    assert decision.matched_rules == ("refund", "vip", "sms")
    assert decision.sentiment is None


def test_the_scorer_is_not_called_when_the_other_conditions_already_fail() -> None:
    rules = [rule("angry-vip", vip=True, sentiment_below=0.0)]

    decision = decide(rules, ANGRY, vip=False, scorer=never_scored)

    assert decision.matched_rules == ()
    assert decision.sentiment is None


def test_the_text_is_scored_at_most_once() -> None:
    scorer = Scorer(-0.9)
    rules = [
        rule("sad", {"tier": 2}, sentiment_below=-0.2),
        rule("very-sad", {"tier": 3}, sentiment_below=-0.8),
        rule("not-so-sad", {"priority": 1}, sentiment_below=-0.95),
    ]

    decision = decide(rules, "text", scorer=scorer)

    assert scorer.calls == ["text"]
    assert decision.matched_rules == ("sad", "very-sad")
    assert decision.tier == 3


def test_later_rules_only_raise_tier_and_priority() -> None:
    rules = [
        rule("high", {"tier": 3, "priority": 8}, keywords_any=["lawyer"]),
        rule("low", {"tier": 1, "priority": 2}, keywords_any=["lawyer"]),
        rule("no-tier", {"team": "legal"}, keywords_any=["lawyer"]),
    ]

    decision = decide(rules, "my lawyer will call", priority=5)

    assert decision.matched_rules == ("high", "low", "no-tier")
    assert (decision.tier, decision.priority) == (3, 8)
    assert decision.team == "legal"


def test_a_rule_never_lowers_the_incoming_priority() -> None:
    decision = decide([rule("calm", {"priority": 1})], priority=7)

    assert decision.priority == 7


def test_rules_raise_step_by_step_and_collect_skills_and_the_last_team() -> None:
    rules = [
        rule(
            "billing",
            {"tier": 1, "team": "billing", "skills": ["billing"]},
            keywords_any=["invoice"],
        ),
        rule(
            "refunds",
            {"tier": 2, "team": "refunds", "skills": ["refunds"]},
            keywords_any=["refund"],
        ),
        rule("german", {"skills": ["de"]}, channels=["email"]),
        rule("never", {"tier": 3, "team": "nope"}, vip=True),
    ]

    decision = decide(rules, "Refund my invoice", channel=Channel.EMAIL)

    assert decision.matched_rules == ("billing", "refunds", "german")
    assert decision.tier == 2
    assert decision.team == "refunds"
    assert decision.skills == frozenset({"billing", "refunds", "de"})
