"""Engine and session factory for PostgreSQL (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event, exc, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util.concurrency import await_

from shared.tracing import instrument_engine


class Database:
    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        asyncpg = url.startswith("postgresql+asyncpg")
        # asyncpg: pinged on checkout only after being idle (``_ping_if_idle``).
        options: dict[str, Any] = {"pool_pre_ping": not asyncpg, "json_serializer": json_text}
        if self.is_sqlite:
            make_sqlite_directory(url)
            options["connect_args"] = {"timeout": 30}
        else:
            # Up to ``pool_size`` connections, each kept once opened: "overflow"
            # connections were closed when returned, so every burst past the pool opened
            # and closed connections (a burst of email webhooks spent a sixth of ingest's
            # CPU connecting, trying TLS and closing). Last in, first out: the connection
            # used a moment ago goes out again, so a lightly loaded service keeps reusing
            # a few connections (their prepared statements cached, no idle ping) and
            # opens no more than its busiest moment needed.
            options.update(pool_size=pool_size, max_overflow=0, pool_use_lifo=True)
        if asyncpg:
            # Batch lookups (``IN`` lists of every size up to a batch) make a few hundred
            # distinct statements; with the default 100 per connection they evicted each
            # other and were prepared again and again (a round trip and parse each).
            options["connect_args"] = {"prepared_statement_cache_size": 500}
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        elif asyncpg:
            pool = self.engine.sync_engine.pool
            event.listen(pool, "connect", _note_in_use)
            event.listen(pool, "checkin", _note_in_use)
            event.listen(pool, "checkout", _ping_if_idle)
        instrument_engine(
            self.engine.sync_engine,
            system="sqlite" if self.is_sqlite else self.engine.dialect.name,
            namespace=None if self.is_sqlite else self.engine.url.database,
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def autocommit(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A pooled connection on which each statement commits by itself (see
        :func:`autocommit`)."""
        return autocommit(self.engine)

    async def healthy(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:  # any failure to reach the database means not ready
            return False
        return True

    async def dispose(self) -> None:
        await self.engine.dispose()


def make_sqlite_directory(url: str) -> None:
    """Create the directory of a SQLite URL's file (SQLite creates the file, not its
    directory); nothing for other URLs or an in-memory database."""
    if not url.startswith("sqlite"):
        return
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


@contextlib.asynccontextmanager
async def autocommit(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection on which each statement is its own transaction: for work
    that is one statement (a read, an idempotent write), without the BEGIN and the
    COMMIT/ROLLBACK round trips a session's transaction adds around it."""
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection


def json_text(value: Any) -> str:
    """JSON columns as text, by orjson: several times faster than ``json.dumps`` on the
    routing explanations (an entry per online agent, written with every decision). What
    orjson refuses (integers beyond 64 bits, lone surrogates) goes through ``json.dumps``
    as before. Non-string keys become strings, as ``json.dumps`` makes them."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)


# A connection back in the pool for less than this is handed out again without a ping.
PING_AFTER_IDLE_SECONDS = 1.0
_IN_USE_AT = "omniroute_in_use_at"


def _note_in_use(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_IN_USE_AT] = time.monotonic()


def _ping_if_idle(
    dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    """The pool's pre-ping, for connections idle at least ``PING_AFTER_IDLE_SECONDS``:
    one that worked a moment ago is handed out as it is, saving a round trip on every
    checkout of a busy service. Should the server have ended it in that moment (a
    restart), its first statement fails as a disconnect, which invalidates it and every
    older pooled connection, so the retry connects anew; a service under load meets
    that once per restart, not once per connection. A failed ping reconnects at once,
    as SQLAlchemy's own pre-ping does."""
    in_use_at = record.info.get(_IN_USE_AT)
    if in_use_at is not None and time.monotonic() - in_use_at < PING_AFTER_IDLE_SECONDS:
        return
    if not _asyncpg_ping(dbapi_connection):
        raise exc.InvalidatePoolError()


def _asyncpg_ping(dbapi_connection: Any) -> bool:
    """The ping in one round trip: ``SELECT 1`` over the simple query protocol. (The
    dialect's own wraps ``;`` in BEGIN and ROLLBACK, for pgbouncer's transaction mode:
    three round trips.) False on any failure."""
    try:
        await_(dbapi_connection.driver_connection.execute("SELECT 1"))
    except Exception:  # a dead connection fails in driver-specific ways
        return False
    return True


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
