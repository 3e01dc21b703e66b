"""Web-chat settings (admins): the origin allow-list ingest enforces for the widget,
its chat API and its WebSocket. Always the caller's own workspace."""

from __future__ import annotations

from fastapi import APIRouter

from services.agent_api.deps import (
    CurrentAgent,
    SessionDep,
    StateDep,
    require_admin,
    require_supervisor,
)
from services.agent_api.rest import problems
from shared.db.models import WebChatSettingsRow
from shared.webchat_origins import WebChatSettingsIn, WebChatSettingsOut, save_allowed_origins

router = APIRouter(prefix="/v1/channels/webchat", tags=["web chat"])


@router.get("/settings", response_model=WebChatSettingsOut, responses=problems(401, 403))
async def get_webchat_settings(
    session: SessionDep, claims: CurrentAgent, state: StateDep
) -> WebChatSettingsOut:
    """The workspace's allowed web-chat origins (empty until an admin saves some)."""
    require_supervisor(claims)
    row = await session.get(WebChatSettingsRow, claims.workspace_id)
    return WebChatSettingsOut(
        allowed_origins=list(row.allowed_origins) if row is not None else [],
        any_origin_when_unlisted=state.settings.effective_webchat_any_origin_when_unlisted,
        updated_at=row.updated_at if row is not None else None,
    )


@router.put("/settings", response_model=WebChatSettingsOut, responses=problems(401, 403, 422))
async def put_webchat_settings(
    body: WebChatSettingsIn, session: SessionDep, claims: CurrentAgent, state: StateDep
) -> WebChatSettingsOut:
    """Replace the allowed origins: `scheme://host[:port]` or `scheme://*.host[:port]`.

    ingest refuses a browser call from any other site (403; the WebSocket closes with
    1008) and the chat page may be framed only by these sites and ingest itself. Takes
    effect within `OMNI_WEBCHAT_SETTINGS_CACHE_SECONDS`."""
    require_admin(claims)
    row = await save_allowed_origins(session, claims.workspace_id, body.allowed_origins)
    await session.commit()
    return WebChatSettingsOut(
        allowed_origins=list(row.allowed_origins),
        any_origin_when_unlisted=state.settings.effective_webchat_any_origin_when_unlisted,
        updated_at=row.updated_at,
    )
