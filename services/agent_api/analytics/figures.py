"""Pure arithmetic of the analytics: percentiles, hour-of-week slots, keywords."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

HOURS_PER_WEEK = 168

# Common English words that say nothing about what customers write about.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't down during each few for from further get got had hadn't has hasn't
    have haven't having he her here hers herself him himself his how i i'm i've if in into is
    isn't it it's its itself just let's me more most much my myself no nor not now of off on
    once only or other ought our ours ourselves out over own please same she should shouldn't
    so some still such than thank thanks that that's the their theirs them themselves then
    there there's these they they're this those through to too under until up us very was
    wasn't we we're were weren't what when where which while who whom why will with won't would
    wouldn't yes yet you you're your yours yourself hello hey hi ok okay one two also""".split()
)
_WORD = re.compile(r"[^\W\d_][\w'\u2019-]*[^\W_]|[^\W\d_]", re.UNICODE)


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def percentile(ordered: Sequence[float], share: float) -> float:
    """Linear interpolation between closest ranks of sorted values (numpy's default)."""
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * share
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def hour_of_week(moment: datetime, zone: ZoneInfo) -> int:
    """0 = Monday 00:00-00:59 … 167 = Sunday 23:00-23:59, in ``zone``."""
    local = aware(moment).astimezone(zone)
    return local.weekday() * 24 + local.hour


def slot_occurrences(start: datetime, end: datetime, zone: ZoneInfo) -> list[float]:
    """How many hours of each hour-of-week slot lie in ``[start, end)`` (partial hours as
    fractions), so counts per slot become arrivals per hour."""
    hours = [0.0] * HOURS_PER_WEEK
    cursor = aware(start)
    end = aware(end)
    while cursor < end:
        next_hour = (cursor.replace(minute=0, second=0, microsecond=0)) + timedelta(hours=1)
        step_end = min(next_hour, end)
        hours[hour_of_week(cursor, zone)] += (step_end - cursor).total_seconds() / 3600.0
        cursor = step_end
    return hours


def words(text: str) -> Iterable[str]:
    for match in _WORD.finditer(text.lower()):
        word = match.group().replace("\u2019", "'")
        if len(word) >= 3 and word not in STOPWORDS:
            yield word


def top_keywords(texts: Iterable[str], limit: int) -> list[tuple[str, int]]:
    """The most frequent content words, counted once per message, ties alphabetical."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(set(words(text)))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
