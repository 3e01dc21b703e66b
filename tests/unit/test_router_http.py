"""The router's HTTP surface is its probes and metrics; anything else is a problem+json
answer, as on the other services (no API to document, so no OpenAPI document)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.router.app import create_app
from shared.bus.memory import MemoryBus
from shared.db.session import Database
from shared.problems import PROBLEM_CONTENT_TYPE
from shared.settings import Settings
from tests.conftest import served


@pytest.fixture
async def router_http(
    settings: Settings, memory_bus: MemoryBus, database: Database
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, bus=memory_bus, database=database)
    async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


async def test_probes_and_metrics_answer(router_http: httpx.AsyncClient) -> None:
    assert (await router_http.get("/healthz")).json() == {"status": "ok"}
    assert (await router_http.get("/readyz")).status_code == 200
    metrics = await router_http.get("/metrics")
    assert metrics.status_code == 200
    assert "# TYPE omni_" in metrics.text


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/v1/conversations"])
async def test_any_other_path_is_a_404_problem(router_http: httpx.AsyncClient, path: str) -> None:
    response = await router_http.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.json()["status"] == 404
    assert response.json()["instance"] == path


async def test_a_wrong_method_on_a_probe_is_a_405_problem(router_http: httpx.AsyncClient) -> None:
    response = await router_http.post("/healthz")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
