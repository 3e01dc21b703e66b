"""correlation_scope: the id current for logs and new events, restored on the way out."""

from __future__ import annotations

import structlog

from shared.correlation import correlation_scope, current_correlation_id


def test_a_scope_binds_the_id_for_logs_and_events_and_restores_the_outer_one() -> None:
    with correlation_scope("outer") as outer:
        with correlation_scope("inner") as inner:
            assert inner == "inner"
            assert current_correlation_id() == "inner"
            assert structlog.contextvars.get_contextvars()["correlation_id"] == "inner"
        assert outer == "outer"
        assert current_correlation_id() == "outer"
        assert structlog.contextvars.get_contextvars()["correlation_id"] == "outer"
    assert current_correlation_id() is None
    assert "correlation_id" not in structlog.contextvars.get_contextvars()


def test_a_missing_or_malformed_id_is_replaced_by_a_new_one() -> None:
    with correlation_scope(None) as minted, correlation_scope("bad id\n") as replaced:
        assert len(minted) == 32
        assert len(replaced) == 32
        assert minted != replaced
