"""The webhook replay guard on PostgreSQL: single autocommit statements, races absorbed."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from services.ingest.replay import ReplayGuard
from shared.db.models import WebhookReplayToken
from shared.db.session import Database

pytestmark = pytest.mark.integration


async def test_a_token_is_seen_only_after_it_was_remembered(pg_database: Database) -> None:
    guard = ReplayGuard(pg_database, retention=timedelta(days=1))
    token = uuid.uuid4().hex
    assert not await guard.seen("mailgun", token)
    await guard.remember("mailgun", token, now=datetime.now(UTC))
    assert await guard.seen("mailgun", token)
    assert not await guard.seen("sendgrid", token)


async def test_racing_copies_record_the_token_once_without_error(pg_database: Database) -> None:
    guard = ReplayGuard(pg_database, retention=timedelta(days=1))
    token = uuid.uuid4().hex
    now = datetime.now(UTC)
    await asyncio.gather(*(guard.remember("mailgun", token, now=now) for _ in range(5)))
    async with pg_database.sessions() as session:
        count = await session.scalar(
            select(func.count()).where(
                WebhookReplayToken.adapter == "mailgun", WebhookReplayToken.token == token
            )
        )
    assert count == 1
    # The connections went back to the pool out of autocommit: a session's flushed,
    # rolled-back row is gone.
    async with pg_database.sessions() as session:
        session.add(WebhookReplayToken(adapter="mailgun", token=token + "-2", seen_at=now))
        await session.flush()
        await session.rollback()
    assert not await guard.seen("mailgun", token + "-2")
