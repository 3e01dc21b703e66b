"""Channel accounts as ingest sees them: read from the database, cached briefly,
secrets resolved from their references."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import structlog
from sqlalchemy import select

from shared.channels.protocol import ChannelAccount
from shared.channels.secrets import SecretReferenceError, resolve_secret
from shared.db.models import ChannelAccount as ChannelAccountRow
from shared.db.session import Database
from shared.events import Channel

log = structlog.get_logger(__name__)


def account_of(row: ChannelAccountRow) -> ChannelAccount:
    try:
        secret = resolve_secret(row.secret_ref)
    except SecretReferenceError as exc:
        log.error("channel account secret unavailable", account_id=str(row.id), error=str(exc))
        secret = None
    return ChannelAccount(
        id=row.id,
        workspace_id=row.workspace_id,
        channel=Channel(row.channel),
        adapter=row.adapter,
        address=row.address.lower(),
        display_name=row.display_name,
        secret=secret,
        settings=dict(row.settings or {}),
    )


class AccountDirectory:
    """Enabled accounts by id and by (channel, address), cached for ``ttl_seconds``
    (negative answers too, so mail to unknown addresses does not load the database)."""

    def __init__(
        self,
        database: Database,
        *,
        ttl_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._ttl = ttl_seconds
        self._clock = clock
        self._by_id: dict[uuid.UUID, tuple[float, ChannelAccount | None]] = {}
        self._by_address: dict[tuple[str, str], tuple[float, ChannelAccount | None]] = {}

    def _fresh(self, entry: tuple[float, ChannelAccount | None] | None) -> bool:
        return entry is not None and self._clock() - entry[0] < self._ttl

    async def by_id(self, account_id: uuid.UUID) -> ChannelAccount | None:
        entry = self._by_id.get(account_id)
        if entry is not None and self._fresh(entry):
            return entry[1]
        async with self._database.sessions() as session:
            row = await session.scalar(
                select(ChannelAccountRow).where(
                    ChannelAccountRow.id == account_id, ChannelAccountRow.enabled.is_(True)
                )
            )
        account = account_of(row) if row is not None else None
        self._by_id[account_id] = (self._clock(), account)
        return account

    async def by_address(self, channel: Channel, address: str) -> ChannelAccount | None:
        key = (channel.value, address.lower())
        entry = self._by_address.get(key)
        if entry is not None and self._fresh(entry):
            return entry[1]
        async with self._database.sessions() as session:
            row = await session.scalar(
                select(ChannelAccountRow).where(
                    ChannelAccountRow.channel == channel.value,
                    ChannelAccountRow.address == address.lower(),
                    ChannelAccountRow.enabled.is_(True),
                )
            )
        account = account_of(row) if row is not None else None
        if len(self._by_address) > 10_000:
            self._by_address.clear()  # bounded: addresses come from strangers
        self._by_address[key] = (self._clock(), account)
        return account
