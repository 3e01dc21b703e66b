"""Failures nothing else handled: a problem+json 500, or 503 with Retry-After when the
database or the broker is unavailable for a moment."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError

from shared.problems import PROBLEM_CONTENT_TYPE, install_problem_handlers


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("broken on purpose")

    @app.get("/database-restarting")
    async def database_restarting() -> None:
        raise OperationalError("SELECT 1", {}, ConnectionResetError("connection was closed"))

    return app


async def _get(path: str) -> httpx.Response:
    # Starlette re-raises after answering (for the server's log); the client sees the answer.
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


async def test_an_unexpected_failure_is_a_500_problem() -> None:
    response = await _get("/broken")

    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.json()["status"] == 500
    assert "broken on purpose" not in response.text  # no internals in the answer


async def test_unavailable_infrastructure_is_a_503_problem_to_retry() -> None:
    response = await _get("/database-restarting")

    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.headers["retry-after"] == "1"
    assert response.json()["instance"] == "/database-restarting"
