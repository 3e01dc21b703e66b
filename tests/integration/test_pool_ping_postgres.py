"""The pool's one-round-trip pre-ping still replaces a connection the server ended."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from shared.db.session import Database

pytestmark = pytest.mark.integration


async def test_a_connection_killed_by_the_server_is_replaced_at_checkout(
    pg_database: Database,
) -> None:
    async with pg_database.engine.connect() as connection:
        first_pid = await connection.scalar(text("SELECT pg_backend_pid()"))
    # The pooled connection is ended from another session (as a server restart would).
    killer = Database(pg_database.url)
    try:
        async with killer.engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid})
            await other.commit()
    finally:
        await killer.dispose()

    for _ in range(3):  # whichever pooled connection comes out, the query succeeds
        async with pg_database.engine.connect() as connection:
            pid = await connection.scalar(text("SELECT pg_backend_pid()"))
            assert await connection.scalar(text("SELECT 1")) == 1
            assert pid != first_pid


async def test_a_live_connection_passes_the_ping_and_is_reused(pg_database: Database) -> None:
    async with pg_database.engine.connect() as connection:
        first_pid = await connection.scalar(text("SELECT pg_backend_pid()"))
        raw = await connection.get_raw_connection()
        assert raw.dbapi_connection is not None
        dbapi_connection = raw.dbapi_connection
        passed = await connection.run_sync(
            lambda _sync: pg_database.engine.dialect.do_ping(dbapi_connection)
        )
    assert passed is True
    # A failing ping would make every checkout connect anew (a new backend each time).
    async with pg_database.engine.connect() as connection:
        assert await connection.scalar(text("SELECT pg_backend_pid()")) == first_pid
