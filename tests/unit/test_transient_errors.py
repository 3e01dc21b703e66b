"""Which failures a consumer waits out (transient) and which dead-letter the record."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from shared.bus.consumer import ConsumerLoop
from shared.bus.memory import MemoryBus
from shared.bus.port import BusRecord, OutgoingRecord
from shared.transient import is_conflict_error, is_transient_error


class AdaptedDriverError(Exception):
    """What SQLAlchemy's asyncpg adapter raises: the asyncpg error is its cause."""


def wrapped(error: Exception) -> DBAPIError:
    adapted = AdaptedDriverError(str(error))
    adapted.__cause__ = error
    return DBAPIError("INSERT INTO messages …", {}, adapted)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(
            asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
            id="57P03 shutting down",
        ),
        pytest.param(
            asyncpg.exceptions.AdminShutdownError("terminating connection"), id="57P01 admin"
        ),
        pytest.param(asyncpg.exceptions.TooManyConnectionsError("too many clients"), id="53300"),
        pytest.param(asyncpg.exceptions.ConnectionDoesNotExistError("connection lost"), id="08003"),
    ],
)
def test_a_restarting_database_is_waited_out(error: Exception) -> None:
    assert is_transient_error(wrapped(error))


def test_a_record_the_database_refuses_is_not_transient() -> None:
    refused = asyncpg.exceptions.NotNullViolationError("null value in column")
    assert not is_transient_error(wrapped(refused))
    assert not is_transient_error(IntegrityError("INSERT", {}, AdaptedDriverError("dup")))
    assert not is_transient_error(ValueError("bad record"))


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(asyncpg.exceptions.DeadlockDetectedError("deadlock detected"), id="40P01"),
        pytest.param(
            asyncpg.exceptions.SerializationError("could not serialize access"), id="40001"
        ),
    ],
)
def test_a_transaction_that_lost_to_another_is_a_conflict_not_an_outage(error: Exception) -> None:
    assert is_conflict_error(wrapped(error))
    assert not is_transient_error(wrapped(error))


def test_no_pooled_connection_coming_free_in_time_is_transient() -> None:
    assert is_transient_error(PoolTimeoutError("QueuePool limit of size 10 overflow 10 reached"))


def test_other_database_errors_are_no_conflict() -> None:
    assert not is_conflict_error(wrapped(asyncpg.exceptions.NotNullViolationError("null")))
    assert not is_conflict_error(ValueError("bad record"))


async def consume_until(
    memory_bus: MemoryBus,
    topic: str,
    handler: Callable[[Sequence[BusRecord]], Awaitable[None]],
    done: Callable[[ConsumerLoop], bool],
    **options: Any,
) -> ConsumerLoop:
    """A consumer of ``topic`` (fast retries) run until ``done(loop)`` (at most about
    3 s), then stopped."""
    loop = ConsumerLoop(
        name=topic,
        source=memory_bus.consumer([topic], group_id="g"),
        handler=handler,
        bus=memory_bus,
        retry_backoff_seconds=0.001,
        **options,
    )
    task = asyncio.create_task(loop.run())
    for _ in range(300):
        if done(loop):
            break
        await asyncio.sleep(0.01)
    loop.request_stop()
    await asyncio.wait_for(task, 5)
    return loop


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ConnectionRefusedError(111, "Connect call failed"), id="refused"),
        pytest.param(ConnectionResetError(104, "reset by peer"), id="reset"),
        pytest.param(OSError("Multiple exceptions: [Errno 111] ..."), id="every address"),
        pytest.param(socket.gaierror(-3, "Temporary failure in name resolution"), id="dns"),
        pytest.param(OSError(28, "No space left on device"), id="disk full"),
        pytest.param(PermissionError(13, "Permission denied", "/media"), id="volume"),
    ],
)
def test_the_network_failing_is_waited_out(error: OSError) -> None:
    assert is_transient_error(error)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(FileNotFoundError(2, "No such file", "/media/x"), id="missing file"),
        pytest.param(NotADirectoryError(20, "Not a directory", "/media/x/y"), id="misplaced"),
        pytest.param(IsADirectoryError(21, "Is a directory", "/media"), id="a directory"),
    ],
)
def test_a_file_that_is_not_there_is_not_waited_for(error: OSError) -> None:
    assert not is_transient_error(error)


async def test_a_record_failing_on_a_missing_file_is_dead_lettered_not_retried_forever(
    memory_bus: MemoryBus,
) -> None:
    topic = "test.missing.file"
    await memory_bus.publish_many([OutgoingRecord(topic=topic, key=b"k", value=b"v")])

    async def handler(records: Sequence[BusRecord]) -> None:
        raise FileNotFoundError(2, "No such file or directory", "/media/gone.jpg")

    await consume_until(
        memory_bus,
        topic,
        handler,
        lambda _: bool(memory_bus.records(f"{topic}.dlq")),
        max_attempts=2,
    )

    assert len(memory_bus.records(f"{topic}.dlq")) == 1


async def test_a_conflicted_batch_is_retried_whole_not_record_by_record(
    memory_bus: MemoryBus,
) -> None:
    topic = "test.conflicts"
    await memory_bus.publish_many(
        [
            OutgoingRecord(topic=topic, key=f"k{i}".encode(), value=f"v{i}".encode())
            for i in range(6)
        ]
    )
    calls: list[int] = []

    async def handler(records: Sequence[BusRecord]) -> None:
        calls.append(len(records))
        if len(calls) == 1:
            raise wrapped(asyncpg.exceptions.DeadlockDetectedError("deadlock detected"))

    loop = await consume_until(memory_bus, topic, handler, lambda loop: loop.processed == 6)

    assert loop.processed == 6
    assert calls == [6, 6]
    assert memory_bus.records(f"{topic}.dlq") == []


async def test_a_batch_that_keeps_conflicting_goes_record_by_record(
    memory_bus: MemoryBus,
) -> None:
    topic = "test.conflicts.forever"
    await memory_bus.publish_many(
        [OutgoingRecord(topic=topic, key=b"k", value=f"v{i}".encode()) for i in range(3)]
    )
    calls: list[int] = []

    async def handler(records: Sequence[BusRecord]) -> None:
        calls.append(len(records))
        if len(records) > 1:
            raise wrapped(asyncpg.exceptions.DeadlockDetectedError("deadlock detected"))

    await consume_until(
        memory_bus, topic, handler, lambda loop: loop.processed == 3, max_attempts=3
    )

    assert calls == [3, 3, 3, 1, 1, 1]
