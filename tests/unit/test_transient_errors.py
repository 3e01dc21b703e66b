"""Which failures a consumer waits out (transient) and which dead-letter the record."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError

from shared.bus.consumer import is_transient_error


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
