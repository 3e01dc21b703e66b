"""Refusing replayed signed webhooks: tokens already accepted are remembered.

A token is recorded only after the broker acknowledged its messages, so a provider
retrying after a failure is not refused; two copies racing past the check are both
published and the router stores one (it dedupes on the provider message id).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from shared.db.models import WebhookReplayToken
from shared.db.session import Database

log = structlog.get_logger(__name__)

PRUNE_EVERY = 500


class ReplayGuard:
    def __init__(self, database: Database, *, retention: timedelta) -> None:
        self._database = database
        self._retention = retention
        self._recorded = 0

    async def seen(self, adapter: str, token: str) -> bool:
        async with self._database.sessions() as session:
            found = await session.scalar(
                select(WebhookReplayToken.token).where(
                    WebhookReplayToken.adapter == adapter, WebhookReplayToken.token == token
                )
            )
        return found is not None

    async def remember(self, adapter: str, token: str, *, now: datetime) -> None:
        async with self._database.sessions() as session:
            session.add(WebhookReplayToken(adapter=adapter, token=token, seen_at=now))
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()  # recorded concurrently: fine
            self._recorded += 1
            if self._recorded % PRUNE_EVERY == 0:
                await session.execute(
                    delete(WebhookReplayToken).where(
                        WebhookReplayToken.seen_at < now - self._retention
                    )
                )
                await session.commit()
