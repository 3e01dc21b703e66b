"""schemathesis over the agent API's whole OpenAPI, against a running agent_api process
on PostgreSQL: no server errors, no response that contradicts the schema."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from devmode.seed import DEMO_AGENTS, DEMO_PASSWORD, seed_demo
from shared.db.session import Database
from tests.conftest import free_port
from tests.e2e.processes import running, wait_ready

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def signed_in(base_url: str, workspace: str) -> dict[str, str]:
    """The demo supervisor's bearer header in ``workspace``."""
    supervisor = next(a for a in DEMO_AGENTS if a.role.value == "supervisor")
    token = httpx.post(
        f"{base_url}/v1/auth/token",
        json={"workspace": workspace, "email": supervisor.email, "password": DEMO_PASSWORD},
        timeout=10,
    ).json()["access_token"]
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def fresh_workspaces(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Seeds a new demo workspace on each call and returns its slug."""
    loop = asyncio.new_event_loop()
    database = Database(postgres_url)

    def fresh() -> str:
        slug = f"fuzz-{uuid.uuid4().hex[:8]}"
        loop.run_until_complete(seed_demo(database, slug=slug))
        return slug

    yield fresh
    loop.run_until_complete(database.dispose())
    loop.close()


@pytest.fixture(scope="module")
def running_api(
    fresh_workspaces: Callable[[], str],
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, str]]]:
    workspace = fresh_workspaces()
    port = free_port()
    env = {
        "OMNI_ENVIRONMENT": "test",
        "OMNI_DATABASE_URL": postgres_url,
        "OMNI_KAFKA_BOOTSTRAP_SERVERS": "",
        "OMNI_AGENT_API_PORT": str(port),
        "OMNI_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    log_dir = tmp_path_factory.mktemp("fuzz")
    with running("services.agent_api", env=env, port=port, log_dir=log_dir) as api:
        wait_ready(api)
        yield api.base_url, signed_in(api.base_url, workspace)
        server_errors = [
            line for line in Path(api.log_path).read_text().splitlines() if "Traceback" in line
        ]
        assert server_errors == [], "the API logged tracebacks during fuzzing"


@pytest.fixture(scope="module")
def agent_api_schema(running_api: tuple[str, dict[str, str]]) -> Any:
    base_url, _ = running_api
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def test_the_agent_api_honours_its_schema(
    agent_api_schema: Any, running_api: tuple[str, dict[str, str]]
) -> None:
    base_url, auth = running_api
    failures: list[str] = []
    operations = 0
    for result in agent_api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def honours_schema(case: Any) -> None:
            case.call_and_validate(base_url=base_url, headers=auth, checks=CHECKS)

        try:
            honours_schema()
        except (Exception, BaseExceptionGroup) as exc:  # collect all operations' failures
            failures.append(f"{operation.label}: {exc}"[:2000])
    assert operations > 10
    assert failures == []


def test_stateful_sequences_along_the_inferred_links_honour_the_schema(
    agent_api_schema: Any,
    running_api: tuple[str, dict[str, str]],
    fresh_workspaces: Callable[[], str],
) -> None:
    """Sequences of calls where one response's ids feed the next request (schemathesis
    infers the links from the schema: list → detail → update → delete, …).

    Each sequence runs in a workspace of its own: which links can be followed depends on
    what the API answers (an empty list feeds no detail call), so a workspace carrying
    the state of earlier sequences would make Hypothesis draw differently when it
    replays a sequence (FlakyStrategyDefinition)."""
    base_url, _ = running_api
    machine = agent_api_schema.as_state_machine()
    transitions = [name for name in dir(machine) if "___" in name and not name.startswith("_")]
    calls: list[int] = []
    workspaces: list[str] = []

    class AgentApiSequences(machine):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            workspaces.append(fresh_workspaces())
            self.auth = signed_in(base_url, workspaces[-1])

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:  # noqa: ARG002
            return {"base_url": base_url, "headers": self.auth}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:  # noqa: ARG002
            calls.append(response.status_code)
            case.validate_response(response, checks=CHECKS)

    assert len(transitions) > 20, "links between operations were inferred"
    AgentApiSequences.run(
        settings=settings(
            max_examples=25,
            stateful_step_count=5,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
    )
    assert len(calls) > 25, "the sequences called the API"
    assert len(set(workspaces)) == len(workspaces) > 1, "each sequence had a workspace of its own"
