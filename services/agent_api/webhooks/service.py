"""Webhook subscriptions of a workspace, their delivery log and replays."""

from __future__ import annotations

import asyncio
import socket
import uuid
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.rest import keyset, split_page
from services.agent_api.webhooks.schemas import WebhookCreate, WebhookUpdate
from shared.db.models import WebhookAttempt, WebhookDelivery, WebhookSubscription, utcnow
from shared.problems import ProblemError
from shared.settings import Environment, Settings
from shared.webhooks import DeliveryState, new_signing_secret, target_refusal


async def check_target(settings: Settings, url: str) -> None:
    """422 for a URL that may not receive webhooks (in prod: resolved and checked)."""
    refusal = target_refusal(url, environment=settings.environment)
    addresses: list[str] = []
    if refusal is None and settings.environment is Environment.PROD:
        host = urlsplit(url).hostname or ""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError) as exc:
            raise ProblemError(422, f"The host {host!r} does not resolve.") from exc
        addresses = [str(info[4][0]) for info in infos]
        refusal = target_refusal(url, environment=settings.environment, addresses=addresses)
    if refusal is not None:
        raise ProblemError(
            422,
            refusal,
            extra={"errors": [{"loc": ["body", "url"], "msg": refusal, "type": "value_error"}]},
        )


async def create_subscription(
    session: AsyncSession, settings: Settings, workspace_id: uuid.UUID, body: WebhookCreate
) -> WebhookSubscription:
    await check_target(settings, body.url)
    now = utcnow()
    row = WebhookSubscription(
        id=uuid.uuid4(),
        workspace_id=workspace_id,
        url=body.url,
        description=body.description,
        event_types=list(body.event_types),
        secret=new_signing_secret(),
        enabled=body.enabled,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    await session.commit()
    return row


async def list_subscriptions(
    session: AsyncSession, workspace_id: uuid.UUID, *, limit: int, cursor: str | None
) -> tuple[list[WebhookSubscription], str | None]:
    rows = list(
        await session.scalars(
            keyset(
                select(WebhookSubscription).where(WebhookSubscription.workspace_id == workspace_id),
                WebhookSubscription.created_at,
                WebhookSubscription.id,
                cursor=cursor,
                limit=limit,
                newest_first=False,
            )
        )
    )
    return split_page(rows, limit, lambda w: (w.created_at, w.id))


async def get_subscription(
    session: AsyncSession, workspace_id: uuid.UUID, webhook_id: uuid.UUID
) -> WebhookSubscription:
    row = await session.scalar(
        select(WebhookSubscription).where(
            WebhookSubscription.id == webhook_id, WebhookSubscription.workspace_id == workspace_id
        )
    )
    if row is None:
        raise ProblemError(404, f"No webhook {webhook_id} in this workspace.")
    return row


async def update_subscription(
    session: AsyncSession,
    settings: Settings,
    workspace_id: uuid.UUID,
    webhook_id: uuid.UUID,
    body: WebhookUpdate,
) -> WebhookSubscription:
    row = await get_subscription(session, workspace_id, webhook_id)
    if body.url is not None:
        await check_target(settings, body.url)
        row.url = body.url
    if body.event_types is not None:
        row.event_types = list(body.event_types)
    if "description" in body.model_fields_set:
        row.description = body.description
    if body.enabled is not None:
        row.enabled = body.enabled
    row.updated_at = utcnow()
    await session.commit()
    return row


async def delete_subscription(
    session: AsyncSession, workspace_id: uuid.UUID, webhook_id: uuid.UUID
) -> None:
    """The subscription goes with its deliveries and their log."""
    row = await get_subscription(session, workspace_id, webhook_id)
    for table in (WebhookAttempt, WebhookDelivery):
        await session.execute(
            delete(table).where(table.workspace_id == workspace_id, table.subscription_id == row.id)
        )
    await session.delete(row)
    await session.commit()


async def list_deliveries(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    webhook_id: uuid.UUID,
    *,
    status: DeliveryState | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[WebhookDelivery], str | None]:
    subscription = await get_subscription(session, workspace_id, webhook_id)
    query = select(WebhookDelivery).where(
        WebhookDelivery.workspace_id == workspace_id,
        WebhookDelivery.subscription_id == subscription.id,
    )
    if status is not None:
        query = query.where(WebhookDelivery.status == status.value)
    rows = list(
        await session.scalars(
            keyset(
                query,
                WebhookDelivery.created_at,
                WebhookDelivery.id,
                cursor=cursor,
                limit=limit,
                newest_first=True,
            )
        )
    )
    return split_page(rows, limit, lambda d: (d.created_at, d.id))


async def get_delivery(
    session: AsyncSession, workspace_id: uuid.UUID, webhook_id: uuid.UUID, delivery_id: uuid.UUID
) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    row = await session.scalar(
        select(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.subscription_id == webhook_id,
            WebhookDelivery.workspace_id == workspace_id,
        )
    )
    if row is None:
        raise ProblemError(404, f"No delivery {delivery_id} of webhook {webhook_id}.")
    attempts = list(
        await session.scalars(
            select(WebhookAttempt)
            .where(
                WebhookAttempt.workspace_id == workspace_id,
                WebhookAttempt.delivery_id == row.id,
            )
            .order_by(WebhookAttempt.number, WebhookAttempt.attempted_at)
        )
    )
    return row, attempts


async def replay_delivery(
    session: AsyncSession,
    settings: Settings,
    workspace_id: uuid.UUID,
    webhook_id: uuid.UUID,
    delivery_id: uuid.UUID,
) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    """Queue a failed delivery again, with a fresh budget of attempts."""
    row, attempts = await get_delivery(session, workspace_id, webhook_id, delivery_id)
    if row.status != DeliveryState.FAILED.value:
        raise ProblemError(
            409, f"Only failed deliveries can be replayed; this one is {row.status}."
        )
    row.status = DeliveryState.PENDING.value
    row.give_up_after = row.attempts + settings.webhook_max_attempts
    row.next_attempt_at = utcnow()
    row.completed_at = None
    await session.commit()
    return row, attempts
