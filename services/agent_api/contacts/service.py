"""Contact use cases: search, the unified profile, edit, merge."""

from __future__ import annotations

import uuid
from collections import defaultdict

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.auth import AgentClaims
from services.agent_api.contacts.schemas import (
    ContactConversation,
    ContactOut,
    ContactProfile,
    ContactUpdate,
    IdentityOut,
)
from services.agent_api.rest import LIKE_ESCAPE, contains_pattern, keyset, split_page
from shared.db.models import Agent, Contact, ContactIdentity, Conversation
from shared.problems import ProblemError

PROFILE_CONVERSATIONS = 100


async def _identities_of(
    session: AsyncSession, workspace_id: uuid.UUID, contact_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[IdentityOut]]:
    found: dict[uuid.UUID, list[IdentityOut]] = defaultdict(list)
    if not contact_ids:
        return found
    rows = await session.scalars(
        select(ContactIdentity)
        .where(
            ContactIdentity.workspace_id == workspace_id,
            ContactIdentity.contact_id.in_(contact_ids),
        )
        .order_by(ContactIdentity.created_at, ContactIdentity.id)
    )
    for identity in rows:
        found[identity.contact_id].append(IdentityOut.model_validate(identity))
    return found


def _out(contact: Contact, identities: list[IdentityOut]) -> ContactOut:
    return ContactOut(
        id=contact.id,
        display_name=contact.display_name,
        vip=contact.vip,
        merged_into_contact_id=contact.merged_into_contact_id,
        created_at=contact.created_at,
        identities=identities,
    )


async def list_contacts(
    session: AsyncSession,
    workspace_id: uuid.UUID,
    *,
    q: str | None,
    vip: bool | None,
    include_merged: bool,
    limit: int,
    cursor: str | None,
) -> tuple[list[ContactOut], str | None]:
    """Newest first; ``q`` matches the display name or any identity address."""
    query = select(Contact).where(Contact.workspace_id == workspace_id)
    if q:
        pattern = contains_pattern(q)
        query = query.where(
            or_(
                Contact.display_name.ilike(pattern, escape=LIKE_ESCAPE),
                Contact.id.in_(
                    select(ContactIdentity.contact_id).where(
                        ContactIdentity.workspace_id == workspace_id,
                        ContactIdentity.address.ilike(pattern, escape=LIKE_ESCAPE),
                    )
                ),
            )
        )
    if vip is not None:
        query = query.where(Contact.vip.is_(vip))
    if not include_merged:
        query = query.where(Contact.merged_into_contact_id.is_(None))
    rows = list(
        await session.scalars(
            keyset(
                query, Contact.created_at, Contact.id, cursor=cursor, limit=limit, newest_first=True
            )
        )
    )
    page, next_cursor = split_page(rows, limit, lambda c: (c.created_at, c.id))
    identities = await _identities_of(session, workspace_id, [c.id for c in page])
    return [_out(c, identities[c.id]) for c in page], next_cursor


async def get_contact(
    session: AsyncSession, workspace_id: uuid.UUID, contact_id: uuid.UUID
) -> Contact:
    """A contact of the workspace; any other id answers 404."""
    contact = await session.scalar(
        select(Contact).where(Contact.id == contact_id, Contact.workspace_id == workspace_id)
    )
    if contact is None:
        raise ProblemError(404, f"No contact {contact_id} in this workspace.")
    return contact


async def profile(session: AsyncSession, contact: Contact) -> ContactProfile:
    workspace_id = contact.workspace_id
    identities = await _identities_of(session, workspace_id, [contact.id])
    in_contact = (Conversation.workspace_id == workspace_id, Conversation.contact_id == contact.id)
    rows = await session.execute(
        select(Conversation, Agent.display_name)
        .outerjoin(
            Agent,
            (Agent.id == Conversation.assignee_agent_id) & (Agent.workspace_id == workspace_id),
        )
        .where(*in_contact)
        .order_by(Conversation.last_message_at.desc(), Conversation.id.desc())
        .limit(PROFILE_CONVERSATIONS)
    )
    conversations = [
        ContactConversation.model_validate(conversation).model_copy(
            update={"assignee_display_name": assignee_name}
        )
        for conversation, assignee_name in rows
    ]
    total = await session.scalar(select(func.count()).select_from(Conversation).where(*in_contact))
    return ContactProfile(
        **_out(contact, identities[contact.id]).model_dump(),
        conversations=conversations,
        conversation_count=int(total or 0),
    )


async def update_contact(
    session: AsyncSession, claims: AgentClaims, contact_id: uuid.UUID, body: ContactUpdate
) -> Contact:
    contact = await get_contact(session, claims.workspace_id, contact_id)
    if contact.merged_into_contact_id is not None:
        raise ProblemError(
            409,
            f"The contact was merged into {contact.merged_into_contact_id}; change that one.",
            extra={"merged_into_contact_id": str(contact.merged_into_contact_id)},
        )
    if "display_name" in body.model_fields_set:
        contact.display_name = body.display_name
    if body.vip is not None and body.vip != contact.vip:
        if not claims.is_supervisor:
            raise ProblemError(403, "Only supervisors and admins can change VIP status.")
        contact.vip = body.vip
    return contact


async def merge_contacts(
    session: AsyncSession, workspace_id: uuid.UUID, keep_id: uuid.UUID, other_id: uuid.UUID
) -> Contact:
    """Move ``other``'s identities and conversations to ``keep``; ``other`` then points at
    ``keep``. Both rows are locked in id order, so concurrent merges of the same pair
    (either direction) run one after the other and the second sees the first."""
    if keep_id == other_id:
        raise ProblemError(409, "A contact cannot be merged into itself.")
    locked = {
        c.id: c
        for c in await session.scalars(
            select(Contact)
            .where(Contact.workspace_id == workspace_id, Contact.id.in_([keep_id, other_id]))
            .order_by(Contact.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    for contact_id in (keep_id, other_id):
        if contact_id not in locked:
            raise ProblemError(404, f"No contact {contact_id} in this workspace.")
    keep, other = locked[keep_id], locked[other_id]
    for contact in (keep, other):
        if contact.merged_into_contact_id is not None:
            raise ProblemError(
                409,
                f"Contact {contact.id} was already merged into {contact.merged_into_contact_id}.",
                extra={"merged_into_contact_id": str(contact.merged_into_contact_id)},
            )
    await session.execute(
        update(ContactIdentity)
        .where(ContactIdentity.workspace_id == workspace_id, ContactIdentity.contact_id == other.id)
        .values(contact_id=keep.id)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Conversation)
        .where(Conversation.workspace_id == workspace_id, Conversation.contact_id == other.id)
        .values(contact_id=keep.id)
        .execution_options(synchronize_session=False)
    )
    # Contacts merged into ``other`` earlier now point straight at the survivor.
    await session.execute(
        update(Contact)
        .where(Contact.workspace_id == workspace_id, Contact.merged_into_contact_id == other.id)
        .values(merged_into_contact_id=keep.id)
        .execution_options(synchronize_session=False)
    )
    other.merged_into_contact_id = keep.id
    keep.vip = keep.vip or other.vip
    if keep.display_name is None:
        keep.display_name = other.display_name
    return keep
