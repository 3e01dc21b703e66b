"""Helpers every benchmark piece shares: processes, databases, statistics, seeding."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ADMIN_URL_DEFAULT = "postgresql+asyncpg://omniroute:omniroute@127.0.0.1:5432/omniroute"
KAFKA_DEFAULT = "127.0.0.1:9092"


def plain(url: str) -> str:
    """An asyncpg URL from a SQLAlchemy one."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


def raise_fd_limit(wanted: int = 20_000) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted`` (bounded by the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` (0-100) percentile by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(latencies_ms, 50),
        "p90_ms": percentile(latencies_ms, 90),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms) if latencies_ms else float("nan"),
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max over repeated runs."""
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "median": ordered[len(ordered) // 2]
        if len(ordered) % 2
        else (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2,
        "max": ordered[-1],
    }


# databases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchDatabase:
    name: str
    url: str  # SQLAlchemy URL for the services

    @property
    def dsn(self) -> str:
        return plain(self.url)


async def create_database(admin_url: str, label: str) -> BenchDatabase:
    """A fresh, migrated database ``bench_<label>_<random>``."""
    from shared.db.migrate import upgrade

    name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(plain(admin_url))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    base = admin_url.rpartition("/")[0]
    url = f"{base}/{name}"
    await asyncio.to_thread(upgrade, url)
    return BenchDatabase(name, url)


async def drop_database(admin_url: str, database: BenchDatabase, *, within: float = 60) -> None:
    """Drop the scenario's database, ending whatever still uses it.

    ``WITH (FORCE)`` refuses to end an autovacuum worker (not our role), which a
    scenario that has just written many rows often starts; a plain ``DROP DATABASE``
    stops autovacuum itself (and waits for it), so that is tried next, until it goes."""
    connection = await asyncpg.connect(plain(admin_url))
    try:
        deadline = time.monotonic() + within
        force = True
        while True:
            try:
                await connection.execute(
                    f'DROP DATABASE IF EXISTS "{database.name}"'
                    + (" WITH (FORCE)" if force else "")
                )
                return
            except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
                if time.monotonic() > deadline:
                    raise
                force = not force
                await asyncio.sleep(0.5)
    finally:
        await connection.close()


# processes -----------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    profiler: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def spawn(
    name: str,
    args: Sequence[str],
    *,
    env: dict[str, str],
    log_dir: Path,
    port: int | None = None,
    profile: bool = False,
) -> Proc:
    """``python <args>`` from the project root, output to ``log_dir/name.log``; with
    ``profile``, ``py-spy record`` attached (collapsed stacks in ``log_dir/name.folded``)."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            [sys.executable, *args],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    proc = Proc(name, process, log_path, port)
    if profile:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        with (log_dir / f"{name}.py-spy.log").open("wb") as spy_log:
            proc.profiler = subprocess.Popen(  # noqa: S603 - the profiler on our own process
                [
                    *(py_spy, "record", "-r", "100", "-f", "raw", "-p", str(process.pid)),
                    *("-o", str(log_dir / f"{name}.folded")),
                ],
                stdout=spy_log,
                stderr=subprocess.STDOUT,
            )
    return proc


def stop(proc: Proc, *, grace: float = 20) -> None:
    if proc.profiler is not None and proc.profiler.poll() is None:
        proc.profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            proc.profiler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.profiler.kill()
            proc.profiler.wait()
    if proc.process.poll() is None:
        proc.process.send_signal(signal.SIGTERM)
        try:
            proc.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait()


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """A list the block appends processes to; every one is stopped when the block ends."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            stop(proc)


def wait_http_ready(proc: Proc, path: str = "/readyz", *, within: float = 90) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{proc.base_url}{path}", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready in {within}s:\n{proc.log_tail()}")


def wait_consumer_assigned(proc: Proc, group: str, *, within: float = 60) -> None:
    """The service's consumer of ``group`` holds partitions (read from its /metrics)."""
    needle = f'omni_consumer_assigned_partitions{{group="{group}"}} '
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            for line in httpx.get(f"{proc.base_url}/metrics", timeout=5).text.splitlines():
                if line.startswith(needle) and float(line[len(needle) :]) > 0:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} never got partitions of {group}:\n{proc.log_tail()}")


def run_json(
    name: str, module: str, spec: dict[str, Any], *, log_dir: Path, timeout: float = 600
) -> dict[str, Any]:
    """Run ``python -m module`` with ``spec`` as JSON on stdin; its last stdout line as JSON."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        completed = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", module],
            cwd=PROJECT_ROOT,
            input=json.dumps(spec).encode(),
            stdout=subprocess.PIPE,
            stderr=log_file,
            timeout=timeout,
            check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{name} failed ({completed.returncode}):\n{log_path.read_text(errors='replace')}"
        )
    result: dict[str, Any] = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    return result


def start_json(name: str, module: str, spec: dict[str, Any], *, log_dir: Path) -> Proc:
    """Start ``python -m module`` with ``spec`` on stdin; collect with :func:`finish_json`."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", module],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
        )
    assert process.stdin is not None
    process.stdin.write(json.dumps(spec).encode())
    process.stdin.close()
    return Proc(name, process, log_path)


def finish_json(proc: Proc, *, timeout: float = 600) -> dict[str, Any]:
    assert proc.process.stdout is not None
    try:
        out = proc.process.stdout.read()
        proc.process.wait(timeout=timeout)
    finally:
        if proc.process.poll() is None:
            proc.process.kill()
            proc.process.wait()
    if proc.process.returncode != 0:
        raise RuntimeError(f"{proc.name} failed:\n{proc.log_tail(60)}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def read_ready_line(proc: Proc, *, within: float = 120) -> dict[str, Any]:
    """The first stdout line of a helper process (it prints one when ready)."""
    assert proc.process.stdout is not None
    line = proc.process.stdout.readline()
    if not line:
        raise RuntimeError(f"{proc.name} ended before ready:\n{proc.log_tail(60)}")
    ready: dict[str, Any] = json.loads(line)
    return ready


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
