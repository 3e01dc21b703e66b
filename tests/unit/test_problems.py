"""Failures nothing else handled: a problem+json 500, or 503 with Retry-After when the
database or the broker is unavailable for a moment."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.middleware.cors import CORSMiddleware

from shared.correlation import CorrelationMiddleware
from shared.problems import (
    PROBLEM_CONTENT_TYPE,
    ProblemError,
    install_problem_handlers,
    status_title,
)
from tests.unit.test_transient_errors import wrapped

ORIGIN = "https://console.example"


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("broken on purpose")

    @app.get("/database-restarting")
    async def database_restarting() -> None:
        raise OperationalError("SELECT 1", {}, ConnectionResetError("connection was closed"))

    @app.get("/pool-exhausted")
    async def pool_exhausted() -> None:
        raise PoolTimeoutError("QueuePool limit of size 10 overflow 10 reached")

    @app.get("/deadlock")
    async def deadlock() -> None:
        raise wrapped(asyncpg.exceptions.DeadlockDetectedError("deadlock detected"))

    app.add_middleware(CorrelationMiddleware)
    app.add_middleware(CORSMiddleware, allow_origins=[ORIGIN])
    return app


async def _get(path: str) -> httpx.Response:
    # Starlette re-raises after answering (for the server's log); the client sees the answer.
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers={"origin": ORIGIN})


async def test_an_unexpected_failure_is_a_500_problem() -> None:
    response = await _get("/broken")

    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.json()["status"] == 500
    assert "broken on purpose" not in response.text  # no internals in the answer


@pytest.mark.parametrize("path", ["/database-restarting", "/pool-exhausted", "/deadlock"])
async def test_unavailable_infrastructure_is_a_503_problem_to_retry(path: str) -> None:
    """Answered inside the app's middleware: a browser client reads it (CORS) and it
    carries the correlation id, like any other answer."""
    response = await _get(path)

    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.headers["retry-after"] == "1"
    assert response.json()["instance"] == path
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["x-correlation-id"]


@pytest.mark.parametrize(
    ("status", "title"),
    [
        (400, "Bad Request"),
        (413, "Content Too Large"),
        (414, "URI Too Long"),
        (422, "Unprocessable Content"),
        (460, "Client Error"),  # an adapter's own status, unknown to http.HTTPStatus
        (599, "Error"),
    ],
)
def test_a_problem_s_title_is_its_status_phrase_in_rfc_9110_s_words(
    status: int, title: str
) -> None:
    assert status_title(status) == title
    assert ProblemError(status, "why").title == title
