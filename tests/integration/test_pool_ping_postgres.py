"""Pooled connections: pinged (one round trip) only after being idle; one the server
ended is replaced at checkout when idle, or after its first failed statement when it
was in use a moment ago."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event, exc, text

import shared.db.session as db_session
from shared.db.session import Database

pytestmark = pytest.mark.integration


async def _end_backend(url: str, pid: int) -> None:
    """End a server backend from another session, as a server restart would."""
    killer = Database(url)
    try:
        async with killer.engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await other.commit()
    finally:
        await killer.dispose()


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The pings the pool makes, with their results."""
    made: list[bool] = []
    real_ping = db_session._asyncpg_ping

    def counted(dbapi_connection: Any) -> bool:
        made.append(real_ping(dbapi_connection))
        return made[-1]

    monkeypatch.setattr(db_session, "_asyncpg_ping", counted)
    return made


async def test_an_idle_connection_killed_by_the_server_is_replaced_at_checkout(
    pg_database: Database, pings: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pg_database.engine.connect() as connection:
        first_pid = await connection.scalar(text("SELECT pg_backend_pid()"))
    await _end_backend(pg_database.url, first_pid)
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_SECONDS", 0.0)  # idle long enough

    for _ in range(3):  # whichever pooled connection comes out, the query succeeds
        async with pg_database.engine.connect() as connection:
            pid = await connection.scalar(text("SELECT pg_backend_pid()"))
            assert await connection.scalar(text("SELECT 1")) == 1
            assert pid != first_pid
    assert False in pings  # the dead one was found by its ping


async def test_a_connection_back_a_moment_ago_is_reused_without_a_ping(
    pg_database: Database, pings: list[bool]
) -> None:
    async with pg_database.engine.connect() as connection:
        first_pid = await connection.scalar(text("SELECT pg_backend_pid()"))
    async with pg_database.engine.connect() as connection:
        assert await connection.scalar(text("SELECT pg_backend_pid()")) == first_pid
    assert pings == []


async def test_an_idle_live_connection_passes_its_ping_and_is_reused(
    pg_database: Database, pings: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pg_database.engine.connect() as connection:
        first_pid = await connection.scalar(text("SELECT pg_backend_pid()"))
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_SECONDS", 0.0)
    # A failing ping would make every checkout connect anew (a new backend each time).
    async with pg_database.engine.connect() as connection:
        assert await connection.scalar(text("SELECT pg_backend_pid()")) == first_pid
    assert pings == [True]


async def test_a_connection_killed_while_in_recent_use_fails_once_then_all_reconnect(
    pg_database: Database, pings: list[bool]
) -> None:
    pids = []
    async with pg_database.engine.connect() as one, pg_database.engine.connect() as two:
        for connection in (one, two):
            pids.append(await connection.scalar(text("SELECT pg_backend_pid()")))
    for pid in pids:
        await _end_backend(pg_database.url, pid)

    with pytest.raises(exc.DBAPIError) as failed:
        async with pg_database.engine.connect() as connection:
            await connection.scalar(text("SELECT 1"))
    assert failed.value.connection_invalidated
    # The disconnect invalidated the whole pool: the other dead connection is not
    # handed out again either.
    for _ in range(2):
        async with pg_database.engine.connect() as connection:
            assert await connection.scalar(text("SELECT pg_backend_pid()")) not in pids
    assert pings == []


async def test_a_burst_past_the_usual_load_keeps_its_connections_for_the_next(
    pg_database: Database,
) -> None:
    """Connections opened for a burst stay in the pool: the next burst of the same size
    opens none (each connect costs the service a TLS attempt, a handshake and later a
    close)."""
    opened = 0

    def count(*_: Any) -> None:
        nonlocal opened
        opened += 1

    event.listen(pg_database.engine.sync_engine.pool, "connect", count)

    async def burst(users: int) -> None:
        release = asyncio.Event()

        async def user() -> None:
            async with pg_database.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
                await release.wait()

        tasks = [asyncio.create_task(user()) for _ in range(users)]
        await asyncio.sleep(0.2)
        release.set()
        await asyncio.gather(*tasks)

    await burst(15)
    after_first = opened
    await burst(15)

    assert after_first >= 15
    assert opened == after_first
