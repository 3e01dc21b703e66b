"""The process-level fault scenarios: only under `make faults`, which starts the suite's
own Kafka and PostgreSQL and sets ``OMNI_FAULTS_*``; skipped everywhere else."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.processes import PROJECT_ROOT
from tests.faults.processes.harness import FaultInfra, Figures, write_results

RESULTS: list[Figures] = []
STARTED = time.time()


@pytest.fixture(scope="session")
def infra() -> FaultInfra:
    found = FaultInfra.from_environment()
    if found is None:
        pytest.skip("fault infrastructure not set (run `make faults`)")
    return found


@pytest.fixture
def log_dir(request: pytest.FixtureRequest) -> Path:
    """The scenario's service logs, kept after the run (pytest's tmp dirs rotate away)."""
    path: Path = PROJECT_ROOT / ".omni" / "faults" / "logs" / str(request.node.name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def record(figures: Figures) -> Figures:
    """Keep a scenario's row for the results table (also when it then fails)."""
    RESULTS.append(figures)
    return figures


def pytest_sessionfinish(session: pytest.Session) -> None:
    if RESULTS:
        table = write_results(sorted(RESULTS, key=lambda r: int(r.scenario[1:])), started=STARTED)
        print("\n" + table)  # noqa: T201 - the run's figures, for the operator
