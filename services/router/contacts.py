"""One customer, one contact: identities of every kind resolve to the same contact.

The sender's address on the channel is the primary identity; an inbound message may
claim more (the email a web-chat customer gave). The contact is the one the primary
identity belongs to, else the one any claimed identity belongs to, else a new one;
identities not known yet are added to it. An identity that already belongs to another
contact is left there (merging two existing contacts is a supervisor's decision).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import structlog
from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.channels.identities import (
    CHANNEL_OF_KIND,
    InvalidIdentityError,
    kind_of_channel,
    normalize_identity,
)
from shared.db.models import Contact, ContactIdentity
from shared.events import ConsentChange, IdentityKind, MessageReceived

log = structlog.get_logger(__name__)

MAX_MERGE_HOPS: Final = 10

Identity = tuple[IdentityKind, str]


def identities_of(inbound: MessageReceived) -> list[Identity]:
    """The sender's identities, primary first, normalized, without duplicates."""
    claims: list[Identity] = []
    primary_kind = kind_of_channel(inbound.channel)
    raw = [(primary_kind, inbound.sender.address)] + [
        (claim.kind, claim.address) for claim in inbound.sender.identities
    ]
    for index, (kind, address) in enumerate(raw):
        try:
            identity = (kind, normalize_identity(kind, address))
        except InvalidIdentityError:
            if index == 0:  # the channel's own address is kept as it came
                identity = (kind, address.strip())
            else:
                log.info("invalid identity claim ignored", kind=kind.value)
                continue
        if identity not in claims:
            claims.append(identity)
    return claims


async def _current(session: AsyncSession, contact_id: uuid.UUID) -> Contact | None:
    """The contact, following merges (``merged_into_contact_id``) to the surviving one."""
    contact = await session.get(Contact, contact_id)
    for _ in range(MAX_MERGE_HOPS):
        if contact is None or contact.merged_into_contact_id is None:
            return contact
        contact = await session.get(Contact, contact.merged_into_contact_id)
    return contact


IdentityKey = tuple[uuid.UUID, str, str]  # workspace, kind, address


# Built once (see the router's batch lookups): the values are expanding parameters.
_CLAIMED_IDENTITIES = (
    select(ContactIdentity, Contact)
    .join(Contact, Contact.id == ContactIdentity.contact_id)
    .where(
        # All three columns of the (workspace_id, kind, address) unique index: with the
        # address alone after the workspace, PostgreSQL scans every identity of the
        # workspace (B6 at 10^6 stored conversations).
        ContactIdentity.workspace_id.in_(bindparam("workspace_ids", expanding=True)),
        ContactIdentity.kind.in_(bindparam("kinds", expanding=True)),
        ContactIdentity.address.in_(bindparam("addresses", expanding=True)),
    )
)


async def known_identities(
    session: AsyncSession, batch: Sequence[MessageReceived]
) -> tuple[dict[IdentityKey, ContactIdentity], list[Contact]]:
    """Every stored identity the batch's senders claim, with its contact, in one query.

    The contacts are returned too: the caller keeps them referenced for the batch, so
    they stay in the session (it holds objects weakly) and ``_current`` finds them
    without a query."""
    claims = {
        (i.workspace_id, kind.value, address) for i in batch for kind, address in identities_of(i)
    }
    if not claims:
        return {}, []
    result = await session.execute(
        _CLAIMED_IDENTITIES,
        {
            "workspace_ids": list({w for w, _, _ in claims}),
            "kinds": list({k for _, k, _ in claims}),
            "addresses": list({a for _, _, a in claims}),
        },
    )
    found = {}
    contacts = []
    for identity, contact in result:
        key = (identity.workspace_id, identity.kind, identity.address)
        if key in claims:
            found[key] = identity
            contacts.append(contact)
    return found, contacts


async def resolve_contact(
    session: AsyncSession,
    inbound: MessageReceived,
    *,
    known_in_batch: dict[IdentityKey, ContactIdentity] | None = None,
) -> Contact:
    """The sender's contact. ``known_in_batch`` (from :func:`known_identities`, kept
    current here as identities are added) answers the lookup without a query and leaves
    the writes to the batch's next flush."""
    workspace_id = inbound.workspace_id
    claims = identities_of(inbound)
    if known_in_batch is not None:
        rows = [
            row
            for kind, address in claims
            if (row := known_in_batch.get((workspace_id, kind.value, address))) is not None
        ]
    else:
        rows = await _stored_identities(session, workspace_id, claims)
    known = {(IdentityKind(row.kind), row.address): row for row in rows}
    contact: Contact | None = None
    for claim in claims:  # primary first
        row = known.get(claim)
        if row is not None:
            contact = await _current(session, row.contact_id)
            if contact is not None:
                break
    if contact is None:
        contact = Contact(
            id=uuid.uuid4(),
            workspace_id=workspace_id,
            display_name=inbound.sender.display_name,
        )
        session.add(contact)
        if known_in_batch is None:
            await session.flush()
    elif contact.display_name is None and inbound.sender.display_name:
        contact.display_name = inbound.sender.display_name
    for kind, address in claims:
        row = known.get((kind, address))
        if row is None:
            added = ContactIdentity(
                id=uuid.uuid4(),
                workspace_id=workspace_id,
                contact_id=contact.id,
                channel=CHANNEL_OF_KIND[kind].value,
                kind=kind.value,
                address=address,
            )
            session.add(added)
            if known_in_batch is not None:
                known_in_batch[(workspace_id, kind.value, address)] = added
        elif row.contact_id != contact.id and (
            (owner := await _current(session, row.contact_id)) is None or owner.id != contact.id
        ):
            log.info(
                "identity belongs to another contact; not merged",
                kind=kind.value,
                contact_id=str(contact.id),
                other_contact_id=str(row.contact_id),
            )
    if known_in_batch is None:
        await session.flush()
    return contact


async def _stored_identities(
    session: AsyncSession, workspace_id: uuid.UUID, claims: list[Identity]
) -> list[ContactIdentity]:
    # Each identity with its contact: the contact lands in the session, so following it
    # (``_current``) needs no query of its own.
    result = await session.execute(
        select(ContactIdentity, Contact)
        .join(Contact, Contact.id == ContactIdentity.contact_id)
        .where(
            ContactIdentity.workspace_id == workspace_id,
            or_(
                *(
                    and_(ContactIdentity.kind == kind.value, ContactIdentity.address == address)
                    for kind, address in claims
                )
            ),
        )
    )
    return [identity for identity, _ in result]


async def record_consent(session: AsyncSession, inbound: MessageReceived, *, now: datetime) -> None:
    """STOP/START on the sender's primary identity (after ``resolve_contact`` added it)."""
    kind, address = identities_of(inbound)[0]
    row = await session.scalar(
        select(ContactIdentity).where(
            ContactIdentity.workspace_id == inbound.workspace_id,
            ContactIdentity.kind == kind.value,
            ContactIdentity.address == address,
        )
    )
    if row is None:
        return
    if inbound.consent is ConsentChange.OPT_OUT:
        row.opted_out_at = now
        row.opt_out_keyword = " ".join(inbound.text.split()).upper()[:32] or "STOP"
    else:
        row.opted_out_at = None
        row.opt_out_keyword = None
    log.info("messaging consent changed", kind=kind.value, consent=str(inbound.consent))
    await session.flush()
