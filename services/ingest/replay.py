"""Refusing replayed signed webhooks: tokens already accepted are remembered.

A token is recorded only after the broker acknowledged its messages, so a provider
retrying after a failure is not refused; two copies racing past the check are both
published and the router stores one (it dedupes on the provider message id).

Both steps are one statement each, run in autocommit: no BEGIN/COMMIT round trips
around them, and a token recorded concurrently is skipped by ``ON CONFLICT DO NOTHING``
rather than an error and a rollback.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from shared.db.models import WebhookReplayToken
from shared.db.session import Database

log = structlog.get_logger(__name__)

PRUNE_EVERY = 500


class ReplayGuard:
    def __init__(self, database: Database, *, retention: timedelta) -> None:
        self._database = database
        self._retention = retention
        self._recorded = 0
        insert = sqlite.insert if database.is_sqlite else postgresql.insert
        # Built once: per request only the parameters change (no statement building).
        self._lookup = select(WebhookReplayToken.token).where(
            WebhookReplayToken.adapter == bindparam("adapter"),
            WebhookReplayToken.token == bindparam("token"),
        )
        self._record = (
            insert(WebhookReplayToken)
            .values(
                adapter=bindparam("adapter"), token=bindparam("token"), seen_at=bindparam("now")
            )
            .on_conflict_do_nothing(index_elements=["adapter", "token"])
        )

    async def seen(self, adapter: str, token: str) -> bool:
        async with self._database.autocommit() as connection:
            found = await connection.scalar(self._lookup, {"adapter": adapter, "token": token})
        return found is not None

    async def remember(self, adapter: str, token: str, *, now: datetime) -> None:
        async with self._database.autocommit() as connection:
            # Recorded concurrently by a racing copy: nothing to do.
            await connection.execute(self._record, {"adapter": adapter, "token": token, "now": now})
            self._recorded += 1
            if self._recorded % PRUNE_EVERY == 0:
                await connection.execute(
                    delete(WebhookReplayToken).where(
                        WebhookReplayToken.seen_at < now - self._retention
                    )
                )
