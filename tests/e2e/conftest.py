"""Fixtures of the end-to-end tests: the services as real processes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.conftest import free_port
from tests.e2e.processes import ServiceProcess, running, wait_ready

FAST_ROUTING = {
    "OMNI_ROUTING_TICK_SECONDS": "0.2",
    "OMNI_POLICY_CACHE_SECONDS": "0",
}


@pytest.fixture(scope="session")
def stack(
    postgres_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServiceProcess]]:
    """ingest, router and agent_api as processes on Kafka and PostgreSQL, for the session;
    every test works in a workspace of its own."""
    tmp_path = tmp_path_factory.mktemp("stack")
    ports = {"ingest": free_port(), "router": free_port(), "agent_api": free_port()}
    env = {
        "OMNI_ENVIRONMENT": "test",
        "OMNI_DATABASE_URL": postgres_url,
        "OMNI_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "OMNI_INGEST_PORT": str(ports["ingest"]),
        "OMNI_ROUTER_PORT": str(ports["router"]),
        "OMNI_AGENT_API_PORT": str(ports["agent_api"]),
        **FAST_ROUTING,
    }
    with contextlib.ExitStack() as stack:
        services = {
            name: stack.enter_context(
                running(f"services.{name}", env=env, port=port, log_dir=tmp_path)
            )
            for name, port in ports.items()
        }
        for service in services.values():
            wait_ready(service)
        yield services
