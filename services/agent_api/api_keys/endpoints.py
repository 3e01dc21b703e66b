"""API keys for integrations (admins only): create (shown once), list, revoke."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import select

from services.agent_api.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ApiKeyPage
from services.agent_api.auth import new_api_key
from services.agent_api.deps import CurrentAgent, SessionDep, require_admin
from services.agent_api.rest import keyset, problems, split_page
from shared.db.models import ApiKey, utcnow
from shared.problems import ProblemError

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])


@router.post(
    "",
    status_code=201,
    response_model=ApiKeyCreated,
    responses=problems(401, 403, 422),
)
async def create_api_key(
    body: ApiKeyCreate, session: SessionDep, claims: CurrentAgent, response: Response
) -> ApiKeyCreated:
    """Create an API key for an integration (admins only). The answer holds the secret
    key, the only time it is shown: only its SHA-256 hash is stored. The integration
    acts with the key's role in this workspace; endpoints that act as an agent (e.g.
    `/v1/me`) refuse keys."""
    require_admin(claims)
    key, prefix, digest = new_api_key()
    row = ApiKey(
        id=uuid.uuid4(),
        workspace_id=claims.workspace_id,
        name=body.name,
        key_prefix=prefix,
        key_hash=digest,
        role=body.role.value,
        created_by_agent_id=claims.agent_id,
        created_at=utcnow(),
    )
    session.add(row)
    await session.commit()
    response.headers["Location"] = f"/v1/api-keys/{row.id}"
    return ApiKeyCreated.model_validate({**ApiKeyOut.model_validate(row).model_dump(), "key": key})


@router.get("", response_model=ApiKeyPage, responses=problems(400, 401, 403, 422))
async def list_api_keys(
    session: SessionDep,
    claims: CurrentAgent,
    include_revoked: Annotated[bool, Query(description="Also list revoked keys.")] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> ApiKeyPage:
    """The workspace's API keys, newest first, without their secrets (admins only)."""
    require_admin(claims)
    query = select(ApiKey).where(ApiKey.workspace_id == claims.workspace_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    rows = list(
        await session.scalars(
            keyset(
                query, ApiKey.created_at, ApiKey.id, cursor=cursor, limit=limit, newest_first=True
            )
        )
    )
    page, next_cursor = split_page(rows, limit, lambda k: (k.created_at, k.id))
    return ApiKeyPage(items=[ApiKeyOut.model_validate(k) for k in page], next_cursor=next_cursor)


@router.delete("/{api_key_id}", status_code=204, responses=problems(401, 403, 404, 422))
async def revoke_api_key(
    api_key_id: uuid.UUID, session: SessionDep, claims: CurrentAgent
) -> Response:
    """Revoke a key (admins only): from now on it answers 401. Revoking it again
    changes nothing."""
    require_admin(claims)
    row = await session.scalar(
        select(ApiKey).where(ApiKey.id == api_key_id, ApiKey.workspace_id == claims.workspace_id)
    )
    if row is None:
        raise ProblemError(404, f"No API key {api_key_id} in this workspace.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await session.commit()
    return Response(status_code=204)
