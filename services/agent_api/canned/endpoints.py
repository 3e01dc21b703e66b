"""Canned responses (every role reads, supervisors write) and resolution outcome codes."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.agent_api.canned import service
from services.agent_api.canned.schemas import (
    CannedResponseCreate,
    CannedResponseOut,
    CannedResponsePage,
    CannedResponseUpdate,
    OutcomeCodeCreate,
    OutcomeCodeOut,
    OutcomeCodePage,
)
from services.agent_api.deps import CurrentAgent, SessionDep, require_supervisor
from services.agent_api.rest import problems

router = APIRouter(prefix="/v1")


@router.get(
    "/canned-responses",
    tags=["canned responses"],
    response_model=CannedResponsePage,
    responses=problems(400, 401, 422),
)
async def list_canned_responses(
    session: SessionDep,
    claims: CurrentAgent,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="Case-insensitive substring of the shortcut, title or body.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> CannedResponsePage:
    """The workspace's canned responses, oldest first."""
    rows, next_cursor = await service.list_canned(
        session, claims.workspace_id, q=q, limit=limit, cursor=cursor
    )
    return CannedResponsePage(
        items=[CannedResponseOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )


@router.post(
    "/canned-responses",
    tags=["canned responses"],
    status_code=201,
    response_model=CannedResponseOut,
    responses=problems(401, 403, 409, 422, s409="The shortcut is taken."),
)
async def create_canned_response(
    body: CannedResponseCreate, session: SessionDep, claims: CurrentAgent, response: Response
) -> CannedResponseOut:
    """Add a canned response (supervisors and admins). Shortcuts are unique per workspace."""
    require_supervisor(claims)
    row = await service.create_canned(session, claims.workspace_id, body)
    response.headers["Location"] = f"/v1/canned-responses/{row.id}"
    return CannedResponseOut.model_validate(row)


@router.get(
    "/canned-responses/{canned_response_id}",
    tags=["canned responses"],
    response_model=CannedResponseOut,
    responses=problems(401, 404, 422),
)
async def get_canned_response(
    canned_response_id: uuid.UUID, session: SessionDep, claims: CurrentAgent
) -> CannedResponseOut:
    """One canned response."""
    row = await service.get_canned(session, claims.workspace_id, canned_response_id)
    return CannedResponseOut.model_validate(row)


@router.patch(
    "/canned-responses/{canned_response_id}",
    tags=["canned responses"],
    response_model=CannedResponseOut,
    responses=problems(401, 403, 404, 409, 422, s409="The shortcut is taken."),
)
async def update_canned_response(
    canned_response_id: uuid.UUID,
    body: CannedResponseUpdate,
    session: SessionDep,
    claims: CurrentAgent,
) -> CannedResponseOut:
    """Change a canned response (supervisors and admins)."""
    require_supervisor(claims)
    row = await service.update_canned(session, claims.workspace_id, canned_response_id, body)
    return CannedResponseOut.model_validate(row)


@router.delete(
    "/canned-responses/{canned_response_id}",
    tags=["canned responses"],
    status_code=204,
    responses=problems(401, 403, 404, 422),
)
async def delete_canned_response(
    canned_response_id: uuid.UUID, session: SessionDep, claims: CurrentAgent
) -> Response:
    """Delete a canned response (supervisors and admins)."""
    require_supervisor(claims)
    await service.delete_canned(session, claims.workspace_id, canned_response_id)
    return Response(status_code=204)


@router.get(
    "/outcome-codes",
    tags=["outcome codes"],
    response_model=OutcomeCodePage,
    responses=problems(400, 401, 422),
)
async def list_outcome_codes(
    session: SessionDep,
    claims: CurrentAgent,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> OutcomeCodePage:
    """The resolution outcomes the workspace offers when a conversation is resolved,
    oldest first."""
    rows, next_cursor = await service.list_outcome_codes(
        session, claims.workspace_id, limit=limit, cursor=cursor
    )
    return OutcomeCodePage(
        items=[OutcomeCodeOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )


@router.post(
    "/outcome-codes",
    tags=["outcome codes"],
    status_code=201,
    response_model=OutcomeCodeOut,
    responses=problems(401, 403, 409, 422, s409="The code exists."),
)
async def create_outcome_code(
    body: OutcomeCodeCreate, session: SessionDep, claims: CurrentAgent, response: Response
) -> OutcomeCodeOut:
    """Add an outcome code (supervisors and admins); codes are unique per workspace."""
    require_supervisor(claims)
    row = await service.create_outcome_code(session, claims.workspace_id, body)
    response.headers["Location"] = f"/v1/outcome-codes/{row.id}"
    return OutcomeCodeOut.model_validate(row)
