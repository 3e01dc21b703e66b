"""REST conventions of the agent API: keyset cursors, documented problem answers and
the caller fingerprint that per-caller state is keyed by."""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from shared.problems import PROBLEM_RESPONSES, ProblemError

T = TypeVar("T")


def problems(*statuses: int, **why: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the problem answers a route can give.

    ``why`` overrides a status's description: ``problems(404, 409, s409="Email in use.")``.
    """
    return {
        status: {
            **PROBLEM_RESPONSES[status],
            "description": why.get(f"s{status}", PROBLEM_RESPONSES[status]["description"]),
        }
        for status in statuses
    }


LIKE_ESCAPE = "\\"


def contains_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        stamp, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        at = datetime.fromisoformat(stamp)
        return (at if at.tzinfo else at.replace(tzinfo=UTC)), uuid.UUID(row_id)
    except (ValueError, binascii.Error) as exc:
        raise ProblemError(400, "The cursor is not one this API issued.") from exc


def keyset(
    query: Select[T],
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[uuid.UUID],
    *,
    cursor: str | None,
    limit: int,
    newest_first: bool,
) -> Select[T]:
    """``query`` ordered by (created_at, id), after ``cursor``, one row beyond ``limit``."""
    if cursor is not None:
        at, last = decode_cursor(cursor)
        if newest_first:
            query = query.where(or_(created_at < at, and_(created_at == at, row_id < last)))
        else:
            query = query.where(or_(created_at > at, and_(created_at == at, row_id > last)))
    order = (created_at.desc(), row_id.desc()) if newest_first else (created_at, row_id)
    return query.order_by(*order).limit(limit + 1)


def split_page(
    rows: list[T], limit: int, key: Callable[[T], tuple[datetime, uuid.UUID]]
) -> tuple[list[T], str | None]:
    """The page and the cursor of the next one (None on the last page)."""
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode_cursor(*key(rows[limit - 1]))


_CREDENTIAL_HEADERS = (b"authorization", b"x-api-key")


def credential_fingerprint(headers: list[tuple[bytes, bytes]]) -> str | None:
    """SHA-256 of the caller's credential (``Authorization`` and ``X-API-Key``), or None.

    Keys per-caller state (rate limits, idempotency records) without keeping secrets.
    """
    found = {name: value for name, value in reversed(headers) if name in _CREDENTIAL_HEADERS}
    if not found:
        return None
    material = b"\n".join(found.get(name, b"") for name in _CREDENTIAL_HEADERS)
    return hashlib.sha256(material).hexdigest()
