"""``make bench`` in miniature: every scenario runs with a tiny load on the real stack.

It proves the harness counts right (every message sent is received, no duplicate rows,
no conversation with two owners, no agent over capacity); it never judges speed, which
is what ``make bench`` is for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.perf.common import PROJECT_ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)
def test_every_scenario_counts_right_with_a_tiny_load(
    postgres_admin_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    completed = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "tests.perf.bench", "--smoke", "--out", str(tmp_path)],
        cwd=PROJECT_ROOT,
        env={
            **os.environ,
            "OMNI_BENCH_DATABASE_URL": postgres_admin_url,
            "OMNI_BENCH_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        },
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads((tmp_path / "smoke.json").read_text())
    scenarios = report["scenarios"]
    assert set(scenarios) == {"B1", "B2", "B3", "B4", "B5", "B6"}

    b1 = scenarios["B1"]
    assert b1["non_2xx"] == 0
    assert all(run["max"]["ingest"]["ok"] > 0 for run in b1["runs"])
    assert all(run["half"]["ok"] == run["half"]["sent"] for run in b1["runs"])

    b2 = scenarios["B2"]
    assert b2["duplicate_messages"] == 0
    assert [r["count"] for r in b2["router_runs"]] == [report["sizes"]["b2_messages"]]
    assert [r["count"] for r in b2["raw_runs"]] == [report["sizes"]["b2_messages"]]

    b3 = scenarios["B3"]
    assert b3["checks"]["conversations"] == report["sizes"]["b3_conversations"]
    assert b3["capacity_violations"] == 0
    assert b3["double_owners"] == 0
    assert b3["checks"]["owner_mismatches"] == 0
    # More new conversations than places (10 agents, capacity 5, none needs a tier or a
    # skill): every place is taken and the rest wait, in the routers and the baseline.
    places = 5 * report["sizes"]["b3_agents"]
    assert report["sizes"]["b3_conversations"] > places
    for found in (b3["checks"], b3["baseline_checks"]):
        assert found["assigned"] == places
        assert found["queued"] == found["conversations"] - places
    assert b3["baseline_checks"]["capacity_violations"] == 0
    assert b3["baseline_checks"]["double_owners"] == 0

    b4 = scenarios["B4"]
    assert b4["frames_missing"] == 0
    assert all(run["received"] == run["sent"] == run["acked"] for run in b4["runs"])
    assert all(run["received"] == run["sent"] for run in b4["raw_runs"])

    b5 = scenarios["B5"]
    assert b5["frames_missing"] == 0
    assert b5["raw_runs"][0]["frames"] == b5["raw_runs"][0]["expected_frames"]

    b6 = scenarios["B6"]
    assert b6["small"]["duplicate_messages"] == b6["large"]["duplicate_messages"] == 0
    assert b6["value"]["median"] > 0
    assert (tmp_path / "smoke.md").read_text().count("| B") == 6
