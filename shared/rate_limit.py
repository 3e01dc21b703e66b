"""Token buckets: a burst of ``per_minute`` actions, then one every ``60 / per_minute`` s.

Pure policy (the clock is passed in) shared by agent_api's per-caller limit and
web chat's per-session message limit. Buckets live in the process that holds them:
with several replicas behind a balancer a limit is per replica.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# Buckets idle this long are full again, so forgetting them changes nothing.
_IDLE_SECONDS = 60.0
_PRUNE_ABOVE = 10_000


@dataclass
class TokenBucket:
    capacity: float
    refill_per_second: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; 0.0 if granted, else the seconds until one is available."""
        self.tokens = min(
            self.capacity, self.tokens + (now - self.updated) * self.refill_per_second
        )
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.refill_per_second


def retry_after_seconds(wait: float) -> int:
    """The ``Retry-After`` value (whole seconds, at least 1) for a refused take."""
    return max(1, math.ceil(wait))


class TokenBuckets:
    """One full bucket per key on first use; idle ones are forgotten when there are many."""

    def __init__(self, *, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str) -> float:
        """Take one token for ``key``; 0.0 if granted, else the seconds to wait."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_ABOVE:
                self._prune(now)
            bucket = TokenBucket(
                capacity=float(self.per_minute),
                refill_per_second=self.per_minute / 60.0,
                tokens=float(self.per_minute),
                updated=now,
            )
            self._buckets[key] = bucket
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        idle = [k for k, b in self._buckets.items() if now - b.updated > _IDLE_SECONDS]
        for key in idle:
            del self._buckets[key]
