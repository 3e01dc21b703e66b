"""A pytest plugin that tallies what the fault modules' own tests observe, per module:
every HTTP answer their clients receive (httpx and requests, so schemathesis too), by
status, and every test's outcome. `make faults` runs the bad-input and isolation modules
(F8-F11) with ``-p tests.faults.processes.tally`` in a subprocess and reads the tally from
the JSON file named by ``OMNI_FAULTS_TALLY``; the tests themselves are not copied.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

TALLY_ENV = "OMNI_FAULTS_TALLY"

_current: list[str] = ["(collection)"]
_statuses: defaultdict[str, Counter[int]] = defaultdict(Counter)
_outcomes: defaultdict[str, Counter[str]] = defaultdict(Counter)
_failed: defaultdict[str, list[str]] = defaultdict(list)


def _count(status: int) -> None:
    _statuses[_current[0]][status] += 1


def _wrap_sync(original: Any) -> Any:
    def send(self: Any, *args: Any, **kwargs: Any) -> Any:
        response = original(self, *args, **kwargs)
        _count(response.status_code)
        return response

    return send


def _wrap_async(original: Any) -> Any:
    async def send(self: Any, *args: Any, **kwargs: Any) -> Any:
        response = await original(self, *args, **kwargs)
        _count(response.status_code)
        return response

    return send


def pytest_configure(config: pytest.Config) -> None:
    httpx.AsyncClient.send = _wrap_async(httpx.AsyncClient.send)  # type: ignore[method-assign]
    httpx.Client.send = _wrap_sync(httpx.Client.send)  # type: ignore[method-assign]
    requests.Session.send = _wrap_sync(requests.Session.send)  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _current[0] = Path(str(item.fspath)).name
    yield


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = Path(report.nodeid.split("::")[0]).name
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _outcomes[module][report.outcome] += 1
        if report.failed:
            _failed[module].append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get(TALLY_ENV)
    if not target:
        return
    modules = set(_statuses) | set(_outcomes)
    tally = {
        module: {
            "statuses": {str(k): v for k, v in sorted(_statuses[module].items())},
            "outcomes": dict(_outcomes[module]),
            "failed": _failed[module],
        }
        for module in sorted(modules)
    }
    Path(target).write_text(json.dumps(tally, indent=2) + "\n")
