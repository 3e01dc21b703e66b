"""Start omniroute services as real OS processes for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

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

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines of the process (other lines skipped)."""
        events = []
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    events.append(parsed)
        return events


@dataclass
class Stopped:
    """What a SIGTERM did: how long the exit took and what ``/readyz`` answered meanwhile."""

    seconds: float
    returncode: int
    readiness: list[int] = field(default_factory=list)


async def sigterm(service: ServiceProcess, *, grace_seconds: float) -> Stopped:
    """SIGTERM the process, probe ``/readyz`` until it stops listening, wait for the exit.

    Fails if the process is still running after ``grace_seconds`` (it is then killed, as
    Kubernetes would after terminationGracePeriodSeconds).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    service.process.send_signal(signal.SIGTERM)
    readiness: list[int] = []
    listening = True
    async with httpx.AsyncClient(timeout=2) as client:
        while service.process.poll() is None and loop.time() - started < grace_seconds:
            if listening:
                try:
                    response = await client.get(
                        f"{service.base_url}/readyz", headers={"connection": "close"}
                    )
                    readiness.append(response.status_code)
                    continue
                except httpx.TransportError:
                    listening = False  # the listener closed: the drain has begun
            await asyncio.sleep(0.02)
    returncode = service.process.poll()
    if returncode is None:
        service.process.kill()
        service.process.wait()
        raise AssertionError(
            f"{service.name} still running {grace_seconds}s after SIGTERM:\n{service.log_tail()}"
        )
    return Stopped(loop.time() - started, returncode, readiness)


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


@dataclass
class OtlpReceiver:
    """A minimal OTLP/HTTP trace collector on loopback: keeps every export it receives.

    Point a service at it with ``OMNI_OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url``.
    """

    exports: list[ExportTraceServiceRequest] = field(default_factory=list)
    url: str = ""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[OtlpReceiver]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        async with server:
            yield self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                body = await reader.readexactly(int(length.group(1)) if length else 0)
                if head.startswith(b"POST /v1/traces"):
                    export = ExportTraceServiceRequest()
                    export.ParseFromString(body)
                    self.exports.append(export)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def spans(self, service_name: str) -> list[str]:
        """Names of the spans exported by ``service_name`` (its ``service.name``)."""
        names: list[str] = []
        for export in self.exports:
            for resource_spans in export.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                if attributes.get("service.name") == service_name:
                    names.extend(
                        span.name for scope in resource_spans.scope_spans for span in scope.spans
                    )
        return names
