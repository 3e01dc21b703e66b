"""PostgreSQL plans of the statements a piece of code issues, for tests that a lookup
stays an index lookup however big the tables grow."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import event

from shared.db.session import Database

T = TypeVar("T")


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an ``EXPLAIN (FORMAT JSON)`` plan, the root first."""
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += plan_nodes(child)
    return nodes


async def run_and_plan(
    database: Database, marker: str, run: Callable[[], Awaitable[T]]
) -> tuple[T, list[dict[str, Any]]]:
    """``run()``'s result, and the plan nodes of the first statement it issued that
    contains ``marker``, explained with sequential scans off: which plan wins depends on
    a table's size (a small one is rightly scanned whole); what a test asserts is that an
    index can find the rows at any size."""
    issued: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if marker in statement:
            issued.append((statement, parameters))

    event.listen(database.engine.sync_engine, "before_cursor_execute", capture)
    try:
        result = await run()
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", capture)
    assert issued, f"no statement with {marker!r} was issued"
    statement, parameters = issued[0]
    async with database.engine.connect() as connection:
        await connection.exec_driver_sql("SET enable_seqscan = off")
        raw = await connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)
        document = raw.scalar_one()
    plan = (json.loads(document) if isinstance(document, str) else document)[0]["Plan"]
    return result, plan_nodes(plan)
