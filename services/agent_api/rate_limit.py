"""Rate limit per caller: an in-process token bucket per token or API key.

Each caller (the SHA-256 of its credential; the client address for anonymous calls
such as sign-in) may make ``per_minute`` requests in a burst and regains one every
``60 / per_minute`` seconds. Beyond that the answer is 429 problem+json with
``Retry-After``. Health, readiness and metrics are exempt, as are WebSockets (their
own limits are the bounded send queue). Buckets live in this process: with several
replicas behind a balancer a caller's limit is per replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from services.agent_api.rest import credential_fingerprint
from shared.problems import problem_response
from shared.rate_limit import TokenBuckets, retry_after_seconds

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


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
        self._buckets = TokenBuckets(per_minute=per_minute, clock=clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        wait = self._buckets.take(self._caller(scope))
        if wait > 0:
            retry_after = retry_after_seconds(wait)
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
