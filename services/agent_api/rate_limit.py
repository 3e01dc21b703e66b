"""Rate limit per caller: an in-process token bucket per token or API key.

Each caller (the SHA-256 of its credential; the client address for anonymous calls
such as sign-in) may make ``per_minute`` requests in a burst and regains one every
``60 / per_minute`` seconds. Beyond that the answer is 429 problem+json with
``Retry-After``. Health, readiness and metrics are exempt, as are WebSockets (their
own limits are the bounded send queue). Buckets live in this process: with several
replicas behind a balancer a caller's limit is per replica.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from services.agent_api.rest import credential_fingerprint
from shared.problems import problem_response

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
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


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        wait = self._take(self._caller(scope))
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            response = problem_response(
                Request(scope),
                429,
                f"More than {self.per_minute} requests per minute; retry in {retry_after} s.",
                headers={"Retry-After": str(retry_after)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _caller(scope: Scope) -> str:
        fingerprint = credential_fingerprint(scope.get("headers", []))
        if fingerprint is not None:
            return fingerprint
        client = scope.get("client")
        return f"address:{client[0] if client else 'unknown'}"

    def _take(self, caller: str) -> float:
        now = self.clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_ABOVE:
                self._prune(now)
            bucket = TokenBucket(
                capacity=float(self.per_minute),
                refill_per_second=self.per_minute / 60.0,
                tokens=float(self.per_minute),
                updated=now,
            )
            self._buckets[caller] = bucket
        return bucket.take(now)

    def _prune(self, now: float) -> None:
        idle = [k for k, b in self._buckets.items() if now - b.updated > _IDLE_SECONDS]
        for caller in idle:
            del self._buckets[caller]
