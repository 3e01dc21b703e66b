"""Outgoing webhooks: the policy both agent_api (subscriptions) and ingest (sending) use.

Pure functions only: the signature of a delivery, the retry schedule, which targets
are allowed, and the JSON body of an event. Each delivery is an HTTP POST whose body is
the event as a CloudEvents 1.0 JSON document (structured mode, written by the
``cloudevents`` package) and whose ``Omni-Webhook-Signature`` is
``v1=<hex HMAC-SHA256 of "{timestamp}.{body}" keyed with the subscription's secret>``.

Why not the ``standardwebhooks`` package: Standard Webhooks signs ``"{id}.{timestamp}.{body}"``
(base64, ``v1,`` prefix); our contract signs ``"{timestamp}.{body}"`` in hex like Stripe,
which stdlib ``hmac`` does in three lines.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from cloudevents.core.formats.json import JSONFormat

from shared.asyncapi import TOPIC_EVENTS
from shared.events import Event, Topic, to_cloudevent
from shared.settings import Environment

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret
SIGNATURE_VERSION: Final = "v1"

HEADER_ID: Final = "Omni-Webhook-Id"
HEADER_EVENT: Final = "Omni-Webhook-Event"
HEADER_TIMESTAMP: Final = "Omni-Webhook-Timestamp"
HEADER_SIGNATURE: Final = "Omni-Webhook-Signature"
HEADER_ATTEMPT: Final = "Omni-Webhook-Attempt"
USER_AGENT: Final = "omniroute-webhooks/1"
DEFAULT_TOLERANCE_SECONDS: Final = 300

_JSON_FORMAT: Final = JSONFormat()


def webhook_event_types() -> frozenset[str]:
    """Event types a subscription may name: everything on ``omni.events.v1``."""
    return frozenset(payload.event_type for payload in TOPIC_EVENTS[Topic.EVENTS])


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def new_signing_secret() -> str:
    return f"{SECRET_PREFIX}{secrets.token_urlsafe(32)}"


def event_body(event: Event) -> bytes:
    """The POST body: the event as a CloudEvents JSON document."""
    return _JSON_FORMAT.write(to_cloudevent(event))


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=<hex>``: HMAC-SHA256 over ``"{timestamp}.{body}"`` keyed with ``secret``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={digest.hexdigest()}"


def delivery_headers(
    *, delivery_id: str, event_type: str, timestamp: int, attempt: int, secret: str, body: bytes
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        HEADER_ID: delivery_id,
        HEADER_EVENT: event_type,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_ATTEMPT: str(attempt),
        HEADER_SIGNATURE: signature(secret, timestamp, body),
    }


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver does: recompute the signature, compare in constant time, and
    refuse a timestamp older (or newer) than ``tolerance_seconds`` against replays.

    ``headers`` is looked up case-insensitively; the signature header may carry several
    space-separated ``v1=`` values (during a secret rotation)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    raw_timestamp = lowered.get(HEADER_TIMESTAMP.lower(), "")
    presented = lowered.get(HEADER_SIGNATURE.lower(), "")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance_seconds:
        return False
    expected = signature(secret, timestamp, body)
    return any(
        hmac.compare_digest(candidate, expected) for candidate in presented.split() if candidate
    )


def retry_delay(attempt: int, *, base_seconds: float, max_seconds: float, jitter: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential (``base * 2**(attempt-1)``, capped at ``max_seconds``) with "equal
    jitter": half the delay is fixed, the other half scaled by ``jitter`` in [0, 1], so
    receivers that came back are not hit by every sender at the same instant."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter must be within [0, 1]")
    ceiling = min(max_seconds, base_seconds * float(2 ** min(attempt - 1, 62)))
    return ceiling / 2 + ceiling / 2 * jitter


def is_accepted(status_code: int | None) -> bool:
    """Only a 2xx answer counts; redirects are not followed and count as failures."""
    return status_code is not None and 200 <= status_code < 300


def after_attempt(*, accepted: bool, attempt: int, give_up_after: int) -> DeliveryState:
    """The delivery's state after attempt number ``attempt``."""
    if accepted:
        return DeliveryState.DELIVERED
    if attempt >= give_up_after:
        return DeliveryState.FAILED
    return DeliveryState.PENDING


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def target_refusal(
    url: str, *, environment: Environment, addresses: Iterable[str] = ()
) -> str | None:
    """Why ``url`` may not receive webhooks, or None.

    Outside dev and test the target must be https and must not be (or resolve to, per
    ``addresses``) a loopback, private, link-local or otherwise non-public address, so a
    workspace admin cannot make omniroute call into its own network."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises for a port that is not a number in range
    except ValueError:
        return "The URL is not valid."
    if parts.scheme not in ("http", "https") or not host:
        return "The URL must be an absolute http(s) URL."
    if parts.username is not None or parts.password is not None:
        return "The URL must not carry credentials; the signature authenticates deliveries."
    if parts.fragment:
        return "The URL must not have a fragment."
    if environment in (Environment.DEV, Environment.TEST):
        return None
    if parts.scheme != "https":
        return "The URL must use https."
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return f"The host {host!r} is not a public address."
    candidates = list(addresses)
    try:
        candidates.append(str(ipaddress.ip_address(host)))
    except ValueError:
        pass
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if not _is_public(address):
            return f"The host {host!r} is (or resolves to) a non-public address ({address})."
    return None
