"""Contacts: search, the unified customer profile, edit, merge duplicates."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from services.agent_api.contacts import service
from services.agent_api.contacts.schemas import (
    ContactMerge,
    ContactPage,
    ContactProfile,
    ContactUpdate,
)
from services.agent_api.deps import CurrentAgent, SessionDep, require_supervisor
from services.agent_api.rest import problems

router = APIRouter(prefix="/v1/contacts", tags=["contacts"])


@router.get("", response_model=ContactPage, responses=problems(400, 401, 422))
async def list_contacts(
    session: SessionDep,
    claims: CurrentAgent,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="Case-insensitive substring of the display name or of any identity "
            "address (email, phone, handle).",
        ),
    ] = None,
    vip: Annotated[bool | None, Query(description="Only VIPs (true) or non-VIPs (false).")] = None,
    include_merged: Annotated[
        bool, Query(description="Also list contacts merged into another.")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> ContactPage:
    """The workspace's customers, newest first, each with their identities."""
    items, next_cursor = await service.list_contacts(
        session,
        claims.workspace_id,
        q=q,
        vip=vip,
        include_merged=include_merged,
        limit=limit,
        cursor=cursor,
    )
    return ContactPage(items=items, next_cursor=next_cursor)


@router.get("/{contact_id}", response_model=ContactProfile, responses=problems(401, 404, 422))
async def get_contact(
    contact_id: uuid.UUID, session: SessionDep, claims: CurrentAgent
) -> ContactProfile:
    """The unified profile: every identity across channels, the conversations on any
    channel with status and assignee (100 most recent), and VIP status.

    A contact merged into another still answers 200, with `merged_into_contact_id`
    naming the survivor and no identities or conversations: read that one instead.
    Merges keep the pointer one hop long."""
    contact = await service.get_contact(session, claims.workspace_id, contact_id)
    return await service.profile(session, contact)


@router.patch(
    "/{contact_id}",
    response_model=ContactProfile,
    responses=problems(
        401,
        403,
        404,
        409,
        422,
        s403="Changing `vip` needs a supervisor or admin.",
        s409="The contact was merged into another.",
    ),
)
async def update_contact(
    contact_id: uuid.UUID, body: ContactUpdate, session: SessionDep, claims: CurrentAgent
) -> ContactProfile:
    """Change the display name (any role) or VIP status (supervisors and admins; VIP
    intake rules apply to new conversations)."""
    contact = await service.update_contact(session, claims, contact_id, body)
    await session.commit()
    return await service.profile(session, contact)


@router.post(
    "/{contact_id}/merge",
    response_model=ContactProfile,
    responses=problems(
        401,
        403,
        404,
        409,
        422,
        s409="Merging a contact into itself, or either contact was already merged.",
    ),
)
async def merge_contact(
    contact_id: uuid.UUID, body: ContactMerge, session: SessionDep, claims: CurrentAgent
) -> ContactProfile:
    """Merge a duplicate into this contact (supervisors and admins): the other contact's
    identities and conversations move here, VIP status carries over, and the other
    contact keeps only `merged_into_contact_id` pointing here. New messages from any of
    the moved addresses thread to this contact."""
    require_supervisor(claims)
    contact = await service.merge_contacts(
        session, claims.workspace_id, contact_id, body.other_contact_id
    )
    await session.commit()
    return await service.profile(session, contact)
