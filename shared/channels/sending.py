"""Sending to a provider's HTTP API with retries: one loop for every HTTP channel.

429, 5xx and network errors are retried with exponential backoff and jitter; any other
refusal is permanent at once; a provider that stays unavailable for every attempt is
given up as permanent too, so the record goes to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx
import structlog

from shared.channels.protocol import PermanentDeliveryError

log = structlog.get_logger(__name__)

RETRYABLE_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


class SendAttemptsExhaustedError(PermanentDeliveryError):
    """The provider stayed unavailable (429/5xx/network) for every attempt: dead-letter."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 10.0


def backoff_delay(policy: RetryPolicy, attempt: int) -> float:
    """Exponential backoff with jitter (half to full of the doubled delay)."""
    ceiling: float = min(policy.backoff_seconds * 2.0 ** (attempt - 1), policy.max_backoff_seconds)
    jitter: float = random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
    return ceiling * jitter


async def post_with_retries(
    client: httpx.AsyncClient,
    url: str,
    *,
    provider: str,
    message_id: str,
    policy: RetryPolicy,
    refusal: Callable[[httpx.Response], str],
    **request: Any,
) -> httpx.Response:
    """POST until the provider accepts (the response is returned) or refuses for good."""
    last_error = ""
    for attempt in range(1, policy.max_attempts + 1):
        try:
            response = await client.post(url, **request)
        except httpx.TransportError as exc:
            last_error = f"network error: {type(exc).__name__}: {exc}"
        else:
            if response.is_success:
                return response
            if response.status_code not in RETRYABLE_STATUSES:
                raise PermanentDeliveryError(refusal(response))
            last_error = refusal(response)
        log.warning(
            f"{provider} unavailable; retrying",
            attempt=attempt,
            message_id=message_id,
            error=last_error,
        )
        if attempt < policy.max_attempts:
            await asyncio.sleep(backoff_delay(policy, attempt))
    raise SendAttemptsExhaustedError(
        f"{provider} unavailable after {policy.max_attempts} attempts: {last_error}"[:500]
    )
