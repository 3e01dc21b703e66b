"""Infrastructure trouble that trying again later fixes: the database or the broker
unreachable, restarting or out of connections. Not the request's or the record's fault:
consumers retry it with backoff, HTTP services answer 503 with Retry-After."""

from __future__ import annotations

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

# PostgreSQL errors that say "the server, not the record": connection exceptions (08…),
# shutting down or starting up (57P01-57P03, "the database system is shutting down"),
# too many connections (53300).
TRANSIENT_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, looking through the driver's wrappers."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


# File-system errors about one path: a missing or misplaced file stays so, and waiting
# would stall a consumer's partition for good (the record is dead-lettered instead; an
# HTTP request gets a 500). Every other OSError passes: a refused or reset connection, a
# name lookup that failed, "Multiple exceptions" from connecting to each of a host's
# addresses, and also a full disk or a volume without permission, which operators fix
# for every record at once.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


def is_transient_error(exc: BaseException) -> bool:
    """Infrastructure trouble that retrying later fixes (not the record's fault)."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError):
        return True  # PoolTimeoutError: no pooled connection came free in time
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, DBAPIError) and (sqlstate_of(exc) or "").startswith(TRANSIENT_SQLSTATES):
        return True
    if isinstance(exc, ConnectionError | TimeoutError | KafkaConnectionError | KafkaTimeoutError):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, _PATH_ERRORS)


# The database rolled the transaction back because of another one (serialization
# failure 40001, deadlock 40P01): the batch as a whole is worth another try.
CONFLICT_SQLSTATES = ("40001", "40P01")


def is_conflict_error(exc: BaseException) -> bool:
    """A transaction that lost to a concurrent one; trying it again can succeed."""
    return isinstance(exc, DBAPIError) and sqlstate_of(exc) in CONFLICT_SQLSTATES
