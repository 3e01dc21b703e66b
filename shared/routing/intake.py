"""Intake rules: decide tier, team, priority and skills of a new conversation."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from shared.events import Channel
from shared.routing.policy import IntakeRule, RuleCondition
from shared.routing.ranking import IntakeDecision

SentimentScorer = Callable[[str], float]


@lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


def vader_compound(text: str) -> float:
    """VADER compound sentiment in [-1, 1] (negative is unhappy)."""
    scores: dict[str, float] = _analyzer().polarity_scores(text)
    return float(scores["compound"])


def _keyword_hit(keywords: list[str], text: str) -> bool:
    lowered = text.lower()
    return any(
        re.search(rf"(?<!\w){re.escape(keyword.lower())}(?!\w)", lowered) for keyword in keywords
    )


def _holds(
    condition: RuleCondition,
    *,
    text: str,
    vip: bool,
    priority: int,
    channel: Channel,
    sentiment: Callable[[], float],
) -> bool:
    if condition.keywords_any and not _keyword_hit(condition.keywords_any, text):
        return False
    if condition.vip is not None and condition.vip != vip:
        return False
    if condition.min_priority is not None and priority < condition.min_priority:
        return False
    if condition.channels and channel not in condition.channels:
        return False
    return not (condition.sentiment_below is not None and sentiment() >= condition.sentiment_below)


def decide_intake(
    rules: list[IntakeRule],
    *,
    text: str,
    vip: bool,
    channel: Channel,
    priority: int = 0,
    score_sentiment: SentimentScorer = vader_compound,
) -> IntakeDecision:
    """Apply every matching rule in order; later rules raise, never lower, tier/priority."""
    cached: list[float] = []

    def sentiment() -> float:
        if not cached:
            cached.append(score_sentiment(text))
        return cached[0]

    tier, team, skills, matched = 1, None, set[str](), []
    for rule in rules:
        if not _holds(
            rule.when, text=text, vip=vip, priority=priority, channel=channel, sentiment=sentiment
        ):
            continue
        matched.append(rule.name)
        action = rule.then
        tier = max(tier, action.tier or 1)
        priority = max(priority, action.priority or 0)
        team = action.team or team
        skills.update(action.skills)
    return IntakeDecision(
        tier=tier,
        priority=priority,
        team=team,
        skills=frozenset(skills),
        matched_rules=tuple(matched),
        sentiment=cached[0] if cached else None,
    )
