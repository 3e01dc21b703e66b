"""Outgoing webhooks (admins only): subscriptions, their delivery log, replays.

Every event of a subscribed type is POSTed to the subscription's URL as a CloudEvents
JSON document, signed with the subscription's secret; see docs/integrations.md.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.agent_api.deps import CurrentAgent, SessionDep, StateDep, require_admin
from services.agent_api.rest import problems
from services.agent_api.webhooks import service
from services.agent_api.webhooks.schemas import (
    WebhookAttemptOut,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryDetail,
    WebhookDeliveryOut,
    WebhookDeliveryPage,
    WebhookEventTypes,
    WebhookOut,
    WebhookPage,
    WebhookUpdate,
)
from shared.db.models import WebhookAttempt, WebhookDelivery
from shared.webhooks import DeliveryState, webhook_event_types

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def _detail(row: WebhookDelivery, attempts: list[WebhookAttempt]) -> WebhookDeliveryDetail:
    return WebhookDeliveryDetail.model_validate(
        {
            **WebhookDeliveryOut.model_validate(row).model_dump(),
            "attempt_log": [WebhookAttemptOut.model_validate(a) for a in attempts],
            "payload": json.loads(row.payload),
        }
    )


@router.get("/event-types", response_model=WebhookEventTypes, responses=problems(401, 403))
async def list_webhook_event_types(claims: CurrentAgent) -> WebhookEventTypes:
    """The event types a subscription may name (admins only)."""
    require_admin(claims)
    return WebhookEventTypes(items=sorted(webhook_event_types()))


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    responses=problems(401, 403, 422, s422="Invalid URL or unknown event types."),
)
async def create_webhook(
    body: WebhookCreate,
    session: SessionDep,
    state: StateDep,
    claims: CurrentAgent,
    response: Response,
) -> WebhookCreated:
    """Subscribe a URL to event types (admins only). The answer holds the signing
    secret, the only time it is shown. Outside dev/test the URL must be https and its
    host public (no loopback or private addresses)."""
    require_admin(claims)
    row = await service.create_subscription(session, state.settings, claims.workspace_id, body)
    response.headers["Location"] = f"/v1/webhooks/{row.id}"
    return WebhookCreated.model_validate(
        {**WebhookOut.model_validate(row).model_dump(), "secret": row.secret}
    )


@router.get("", response_model=WebhookPage, responses=problems(400, 401, 403, 422))
async def list_webhooks(
    session: SessionDep,
    claims: CurrentAgent,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> WebhookPage:
    """The workspace's webhook subscriptions, oldest first, without secrets (admins only)."""
    require_admin(claims)
    rows, next_cursor = await service.list_subscriptions(
        session, claims.workspace_id, limit=limit, cursor=cursor
    )
    return WebhookPage(items=[WebhookOut.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/{webhook_id}", response_model=WebhookOut, responses=problems(401, 403, 404, 422))
async def get_webhook(
    webhook_id: uuid.UUID, session: SessionDep, claims: CurrentAgent
) -> WebhookOut:
    """One webhook subscription (admins only)."""
    require_admin(claims)
    return WebhookOut.model_validate(
        await service.get_subscription(session, claims.workspace_id, webhook_id)
    )


@router.patch(
    "/{webhook_id}",
    response_model=WebhookOut,
    responses=problems(401, 403, 404, 422, s422="Invalid URL or unknown event types."),
)
async def update_webhook(
    webhook_id: uuid.UUID,
    body: WebhookUpdate,
    session: SessionDep,
    state: StateDep,
    claims: CurrentAgent,
) -> WebhookOut:
    """Change the URL, event types, description or enabled flag (admins only)."""
    require_admin(claims)
    row = await service.update_subscription(
        session, state.settings, claims.workspace_id, webhook_id, body
    )
    return WebhookOut.model_validate(row)


@router.delete("/{webhook_id}", status_code=204, responses=problems(401, 403, 404, 422))
async def delete_webhook(
    webhook_id: uuid.UUID, session: SessionDep, claims: CurrentAgent
) -> Response:
    """Delete a subscription with its deliveries and their log (admins only)."""
    require_admin(claims)
    await service.delete_subscription(session, claims.workspace_id, webhook_id)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=WebhookDeliveryPage,
    responses=problems(400, 401, 403, 404, 422),
)
async def list_webhook_deliveries(
    webhook_id: uuid.UUID,
    session: SessionDep,
    claims: CurrentAgent,
    status: Annotated[DeliveryState | None, Query(description="Only this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> WebhookDeliveryPage:
    """The subscription's deliveries, newest first (admins only)."""
    require_admin(claims)
    rows, next_cursor = await service.list_deliveries(
        session, claims.workspace_id, webhook_id, status=status, limit=limit, cursor=cursor
    )
    return WebhookDeliveryPage(
        items=[WebhookDeliveryOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )


@router.get(
    "/{webhook_id}/deliveries/{delivery_id}",
    response_model=WebhookDeliveryDetail,
    responses=problems(401, 403, 404, 422),
)
async def get_webhook_delivery(
    webhook_id: uuid.UUID, delivery_id: uuid.UUID, session: SessionDep, claims: CurrentAgent
) -> WebhookDeliveryDetail:
    """One delivery with its body and every attempt: time, status code, error, duration
    (admins only)."""
    require_admin(claims)
    row, attempts = await service.get_delivery(
        session, claims.workspace_id, webhook_id, delivery_id
    )
    return _detail(row, attempts)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/replay",
    status_code=202,
    response_model=WebhookDeliveryDetail,
    responses=problems(401, 403, 404, 409, 422, s409="The delivery has not failed."),
)
async def replay_webhook_delivery(
    webhook_id: uuid.UUID,
    delivery_id: uuid.UUID,
    session: SessionDep,
    state: StateDep,
    claims: CurrentAgent,
) -> WebhookDeliveryDetail:
    """Send a failed delivery again (same id and body), with a fresh budget of attempts
    (admins only)."""
    require_admin(claims)
    row, attempts = await service.replay_delivery(
        session, state.settings, claims.workspace_id, webhook_id, delivery_id
    )
    return _detail(row, attempts)
