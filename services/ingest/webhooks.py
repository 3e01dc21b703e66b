"""Outgoing webhooks, sent by ingest next to the outbound dispatcher.

Two parts. ``WebhookFanOut`` consumes ``omni.events.v1`` in its own consumer group and
writes one delivery row per (event, matching subscription) — idempotent on the event
id, so a redelivered batch adds nothing. ``WebhookSender`` runs on every ingest
replica: it claims due deliveries with ``FOR UPDATE SKIP LOCKED`` (so replicas never
send the same attempt at once), leases them by moving their due time past the request
timeout and commits, then POSTs without holding a transaction; the outcome (and the
attempt's log row) is written afterwards. A replica that dies mid-attempt leaves the
delivery due again when the lease ends: delivery is at least once, and receivers
deduplicate on ``Omni-Webhook-Id``.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from shared.bus.port import BusRecord
from shared.db.models import WebhookAttempt, WebhookDelivery, WebhookSubscription, utcnow
from shared.db.session import Database
from shared.events import Event, EventDecodeError, decode_event
from shared.metrics import WEBHOOK_ATTEMPT_SECONDS, WEBHOOK_ATTEMPTS, WEBHOOK_DELIVERIES_CREATED
from shared.settings import Environment, Settings
from shared.webhooks import (
    DeliveryState,
    after_attempt,
    delivery_headers,
    event_body,
    is_accepted,
    retry_delay,
    target_refusal,
    webhook_event_types,
)

log = structlog.get_logger(__name__)

LEASE_MARGIN_SECONDS = 30.0


class WebhookFanOut:
    """Batch handler for ``omni.events.v1``: events → pending delivery rows."""

    def __init__(self, database: Database, *, max_attempts: int) -> None:
        self._database = database
        self._max_attempts = max_attempts
        self._types = webhook_event_types()

    async def handle(self, records: Sequence[BusRecord]) -> None:
        events: list[Event] = []
        for record in records:
            try:
                event = decode_event(record)
            except EventDecodeError as exc:  # the agent API's consumer reports these too
                log.warning("undecodable event skipped by webhooks", error=str(exc))
                continue
            if event.type in self._types:
                events.append(event)
        if not events:
            return
        workspaces = {event.data.workspace_id for event in events}
        async with self._database.sessions() as session:
            subscriptions = list(
                await session.scalars(
                    select(WebhookSubscription).where(
                        WebhookSubscription.workspace_id.in_(workspaces),
                        WebhookSubscription.enabled.is_(True),
                    )
                )
            )
            rows = deliveries_for(events, subscriptions, max_attempts=self._max_attempts)
            if rows:
                await _insert_new(session, rows)
                await session.commit()
        for row in rows:
            WEBHOOK_DELIVERIES_CREATED.labels(event_type=row["event_type"]).inc()


def deliveries_for(
    events: Sequence[Event], subscriptions: Sequence[WebhookSubscription], *, max_attempts: int
) -> list[dict[str, Any]]:
    """The delivery rows of ``events``: one per event and subscription that wants it."""
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for event in events:
        body: str | None = None
        for subscription in subscriptions:
            if subscription.workspace_id != event.data.workspace_id:
                continue
            if event.type not in subscription.event_types:
                continue
            body = body or event_body(event).decode()
            rows.append(
                {
                    "id": uuid.uuid4(),
                    "workspace_id": subscription.workspace_id,
                    "subscription_id": subscription.id,
                    "event_id": event.id,
                    "event_type": event.type,
                    "payload": body,
                    "status": DeliveryState.PENDING.value,
                    "attempts": 0,
                    "give_up_after": max_attempts,
                    "next_attempt_at": now,
                    "created_at": now,
                }
            )
    return rows


async def _insert_new(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert, skipping (subscription, event) pairs already there (a redelivered batch)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(WebhookDelivery).on_conflict_do_nothing(
        index_elements=["subscription_id", "event_id"]
    )
    await session.execute(statement, rows)


@dataclass(frozen=True)
class ClaimedDelivery:
    delivery_id: uuid.UUID
    workspace_id: uuid.UUID
    subscription_id: uuid.UUID
    url: str
    secret: str
    event_type: str
    payload: bytes
    attempt: int
    give_up_after: int


class WebhookSender:
    """Claims due deliveries and POSTs them, with retries on the delivery's schedule."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        client: httpx.AsyncClient | None = None,
        jitter: random.Random | None = None,
    ) -> None:
        self._database = database
        self._settings = settings
        self._client = client
        self._jitter = jitter or random.SystemRandom()
        self._stopping = asyncio.Event()

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        own_client = self._client is None
        client = self._client or httpx.AsyncClient(
            timeout=self._settings.webhook_timeout_seconds, follow_redirects=False
        )
        try:
            while not self._stopping.is_set():
                try:
                    sent = await self.send_due(client)
                except Exception as exc:  # a DB hiccup must not end the loop
                    log.warning("webhook sending failed; retrying", error=str(exc))
                    sent = 0
                if sent:
                    continue
                try:
                    await asyncio.wait_for(
                        self._stopping.wait(),
                        timeout=self._settings.webhook_poll_interval_seconds,
                    )
                except TimeoutError:
                    pass
        finally:
            if own_client:
                await client.aclose()

    async def send_due(self, client: httpx.AsyncClient) -> int:
        """Send one batch of due deliveries; the number attempted."""
        claimed = await self._claim()
        if claimed:
            await asyncio.gather(*(self._attempt(client, delivery) for delivery in claimed))
        return len(claimed)

    async def _claim(self) -> list[ClaimedDelivery]:
        now = utcnow()
        lease = timedelta(seconds=self._settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS)
        async with self._database.sessions() as session:
            rows = (
                await session.execute(
                    select(WebhookDelivery, WebhookSubscription)
                    .join(
                        WebhookSubscription,
                        (WebhookSubscription.id == WebhookDelivery.subscription_id)
                        & (WebhookSubscription.workspace_id == WebhookDelivery.workspace_id),
                    )
                    .where(
                        WebhookDelivery.status == DeliveryState.PENDING.value,
                        WebhookDelivery.next_attempt_at <= now,
                        WebhookSubscription.enabled.is_(True),
                    )
                    .order_by(WebhookDelivery.next_attempt_at)
                    .limit(self._settings.webhook_batch_size)
                    .with_for_update(skip_locked=True, of=WebhookDelivery)
                )
            ).all()
            claimed: list[ClaimedDelivery] = []
            for delivery, subscription in rows:
                delivery.attempts += 1
                delivery.next_attempt_at = now + lease
                claimed.append(
                    ClaimedDelivery(
                        delivery_id=delivery.id,
                        workspace_id=delivery.workspace_id,
                        subscription_id=subscription.id,
                        url=subscription.url,
                        secret=subscription.secret,
                        event_type=delivery.event_type,
                        payload=delivery.payload.encode(),
                        attempt=delivery.attempts,
                        give_up_after=delivery.give_up_after,
                    )
                )
            await session.commit()
        return claimed

    async def _refusal(self, url: str) -> str | None:
        """In production the target is checked again at send time (its DNS may change)."""
        environment = self._settings.environment
        if environment is not Environment.PROD:
            return None
        host = urlsplit(url).hostname or ""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            return f"The host {host!r} does not resolve: {exc}"
        addresses = [str(info[4][0]) for info in infos]
        return target_refusal(url, environment=environment, addresses=addresses)

    async def _attempt(self, client: httpx.AsyncClient, delivery: ClaimedDelivery) -> None:
        attempted_at = utcnow()
        started = time.perf_counter()
        status_code: int | None = None
        error = await self._refusal(delivery.url)
        if error is None:
            headers = delivery_headers(
                delivery_id=str(delivery.delivery_id),
                event_type=delivery.event_type,
                timestamp=int(time.time()),
                attempt=delivery.attempt,
                secret=delivery.secret,
                body=delivery.payload,
            )
            try:
                # Streamed and not read: a receiver's (possibly huge) body is of no use.
                async with client.stream(
                    "POST",
                    delivery.url,
                    content=delivery.payload,
                    headers=headers,
                    timeout=self._settings.webhook_timeout_seconds,
                ) as response:
                    status_code = response.status_code
                    if not is_accepted(status_code):
                        error = f"HTTP {status_code} {response.reason_phrase}".strip()
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        duration = time.perf_counter() - started
        WEBHOOK_ATTEMPT_SECONDS.observe(duration)
        accepted = error is None and is_accepted(status_code)
        state = after_attempt(
            accepted=accepted, attempt=delivery.attempt, give_up_after=delivery.give_up_after
        )
        await self._record(delivery, state, attempted_at, status_code, error, duration)
        outcome = "retry" if state is DeliveryState.PENDING else state.value
        WEBHOOK_ATTEMPTS.labels(outcome=outcome).inc()
        log.info(
            "webhook attempt",
            delivery_id=str(delivery.delivery_id),
            attempt=delivery.attempt,
            status_code=status_code,
            outcome=outcome,
            error=error,
        )

    async def _record(
        self,
        delivery: ClaimedDelivery,
        state: DeliveryState,
        attempted_at: datetime,
        status_code: int | None,
        error: str | None,
        duration: float,
    ) -> None:
        async with self._database.sessions() as session:
            row = await session.scalar(
                select(WebhookDelivery).where(
                    WebhookDelivery.id == delivery.delivery_id,
                    WebhookDelivery.workspace_id == delivery.workspace_id,
                )
            )
            if row is None:  # the subscription was deleted meanwhile
                return
            session.add(
                WebhookAttempt(
                    id=uuid.uuid4(),
                    workspace_id=delivery.workspace_id,
                    subscription_id=delivery.subscription_id,
                    delivery_id=delivery.delivery_id,
                    number=delivery.attempt,
                    attempted_at=attempted_at,
                    status_code=status_code,
                    error=error[:500] if error else None,
                    duration_ms=round(duration * 1000, 3),
                )
            )
            row.last_status_code = status_code
            row.last_error = error[:500] if error else None
            row.status = state.value
            if state is DeliveryState.PENDING:
                row.next_attempt_at = utcnow() + timedelta(
                    seconds=retry_delay(
                        delivery.attempt,
                        base_seconds=self._settings.webhook_retry_base_seconds,
                        max_seconds=self._settings.webhook_retry_max_seconds,
                        jitter=self._jitter.random(),
                    )
                )
            else:
                row.next_attempt_at = None
                row.completed_at = utcnow()
            await session.commit()
