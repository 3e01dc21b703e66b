"""F8-F11 in the fault run: the modules that hold those checks run as they are, in a
pytest subprocess on the fault suite's PostgreSQL and Kafka, with the tally plugin
(tests/faults/processes/tally.py) counting every HTTP answer their tests receive. Each
row's figures come from that subprocess; the checks themselves live in the modules."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.processes import PROJECT_ROOT
from tests.faults.processes.conftest import record
from tests.faults.processes.harness import FaultInfra, Figures
from tests.faults.processes.tally import TALLY_ENV

pytestmark = pytest.mark.faults

# scenario → (title, module, what its tests assert besides the answers)
SUITES = {
    "F8": (
        "signatures: tampered body, wrong URL, stale timestamp, missing header, replay",
        "tests/faults/test_signatures.py",
        "every forgery of every built-in adapter refused; 0 events, 0 messages",
    ),
    "F9": (
        "tenant isolation: every endpoint with another workspace's ids",
        "tests/faults/test_tenant_isolation.py",
        "404 problem+json without existence leak; 0 rows of the other workspace changed",
    ),
    "F10": (
        "schemathesis over the whole OpenAPI, stateful along links (agent_api process)",
        "tests/integration/test_api_schemathesis.py",
        "schemathesis checks: no server error, status/content type/body as documented",
    ),
    "F11": (
        "malformed input corpus: MIME, charsets, huge bodies, JSON, content types, frames",
        "tests/faults/test_bad_input_corpus.py",
        "clear 4xx (SMTP 5xx), nothing stored or published",
    ),
}


async def test_f8_to_f11_check_suites(infra: FaultInfra, log_dir: Path) -> None:
    rows = {
        scenario: record(Figures(scenario, title, checks=True))
        for scenario, (title, _, _) in SUITES.items()
    }
    tally_path = log_dir / "tally.json"
    tally_path.unlink(missing_ok=True)
    database_url = await infra.fresh_database()
    env = {
        **os.environ,
        TALLY_ENV: str(tally_path),
        "OMNI_TEST_DATABASE_URL": database_url,
        "OMNI_TEST_KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.faults.processes.tally",
        "-q",
        "--timeout",
        "900",
        *(module for _, module, _ in SUITES.values()),
    ]
    with (log_dir / "pytest.log").open("wb") as log:
        finished = await asyncio.to_thread(
            subprocess.run,  # our own interpreter and test modules
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=1500,
            check=False,
        )
    tally = json.loads(tally_path.read_text())
    problems: list[str] = []
    for scenario, (_, module, asserted) in SUITES.items():
        figures = rows[scenario]
        found = tally.get(Path(module).name, {"statuses": {}, "outcomes": {}, "failed": []})
        statuses = {int(k): v for k, v in found["statuses"].items()}
        outcomes = found["outcomes"]
        passed, failed = outcomes.get("passed", 0), outcomes.get("failed", 0)
        figures.cases = sum(statuses.values())
        figures.refused = sum(v for k, v in statuses.items() if 400 <= k < 500)
        figures.server_errors = sum(v for k, v in statuses.items() if k >= 500)
        holds = failed == 0 and passed > 0 and figures.server_errors == 0 and figures.cases > 0
        # The modules assert "nothing stored or published" themselves: 0 when they passed.
        figures.bad_input_kept = "0" if holds else "see failures"
        figures.summary = f"{passed} tests passed, {failed} failed; answers {statuses}"
        figures.notes.append(f"{module}: {asserted}")
        figures.notes.extend(f"failed: {nodeid}" for nodeid in found["failed"])
        figures.outcome = "pass" if holds else "FAIL"
        if not holds:
            problems.append(f"{scenario}: {figures.summary}")
    assert finished.returncode == 0 or problems, f"pytest exited {finished.returncode}"
    assert problems == [], problems
