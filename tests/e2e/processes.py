"""Start omniroute services as real OS processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    base_url: str

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def wait_ready(service: ServiceProcess, *, within_seconds: float = 90) -> None:
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited:\n{service.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{service.base_url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{service.name} not ready in {within_seconds}s:\n{service.log_tail()}")


@contextlib.contextmanager
def running(
    module: str, *, env: dict[str, str], port: int, log_dir: Path, name: str | None = None
) -> Iterator[ServiceProcess]:
    """Run ``python -m module`` until the block ends; SIGTERM, then SIGKILL if stuck."""
    label = name or module.rsplit(".", 1)[-1]
    log_path = log_dir / f"{label}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", module],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        service = ServiceProcess(label, process, log_path, f"http://127.0.0.1:{port}")
        try:
            yield service
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=25)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
