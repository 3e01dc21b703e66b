"""HTTP load generator, run as its own process (``python -m tests.perf.httpload``).

Reads a JSON spec on stdin, prints one JSON result line. Requests are built before the
clock starts (signatures included) and sent over keep-alive HTTP/1.1 connections.

- ``closed``: ``concurrency`` connections send back to back for ``seconds``: the most
  the server answers (its max req/s).
- ``open``: request *i* is due at ``start + i / rate`` whatever happened before (open
  loop); its latency runs from that scheduled time to the full response, so queueing in
  a slow server (or in this client) counts and cannot hide (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import uvloop

from tests.perf.common import latency_summary, raise_fd_limit
from tests.perf.payloads import WebhookSpec, chat_request, mixed_requests, text_of


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        """Send one request, read the whole response; its status code."""
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._writer.write(raw)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self._reader.readexactly(length)
        if b"connection: close" in head.lower():
            self.close()
        return status

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def build(spec: dict[str, Any]) -> list[bytes]:
    webhooks = WebhookSpec.from_json(spec["webhooks"])
    count = int(spec["count"])
    if spec.get("sessions"):  # B4: messages on seeded conversations, numbered
        import random

        rng = random.Random(11)  # noqa: S311 - reproducible load, not secrets
        sessions: list[str] = spec["sessions"]
        return [
            chat_request(
                webhooks,
                sessions[index % len(sessions)],
                text_of(rng.randint(500, 1500), rng, prefix=f"bench#{index}#"),
            )
            for index in range(count)
        ]
    return mixed_requests(webhooks, count, echo_path=spec.get("path"))


async def closed_loop(
    host: str, port: int, requests: list[bytes], concurrency: int, seconds: float
) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        connection = Connection(host, port)
        while time.perf_counter() < stop_at:
            raw = requests[next_index % len(requests)]
            next_index += 1
            sent = time.perf_counter()
            try:
                status = await connection.request(raw)
            except (OSError, asyncio.IncompleteReadError):
                status = 0
                connection.close()
            latencies.append((time.perf_counter() - sent) * 1000)
            statuses[status] += 1
        connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "mode": "closed",
        "concurrency": concurrency,
        "seconds": elapsed,
        "sent": sum(statuses.values()),
        "ok": ok,
        "statuses": {str(k): v for k, v in statuses.items()},
        "throughput_rps": ok / elapsed,
        **latency_summary(latencies),
    }


async def open_loop(
    host: str, port: int, requests: list[bytes], rate: float, concurrency: int
) -> dict[str, Any]:
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        connection = Connection(host, port)
        while (item := await queue.get()) is not None:
            index, due = item
            try:
                status = await connection.request(requests[index])
            except (OSError, asyncio.IncompleteReadError):
                status = 0
                connection.close()
            latencies.append((loop.time() - due) * 1000)
            statuses[status] += 1
        connection.close()

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    start = loop.time() + 0.2
    start_wall = time.time() + 0.2
    for index in range(len(requests)):
        due = start + index / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((index, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = loop.time() - start
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "mode": "open",
        "offered_rps": rate,
        "start_wall": start_wall,
        "seconds": elapsed,
        "sent": len(requests),
        "ok": ok,
        "statuses": {str(k): v for k, v in statuses.items()},
        "throughput_rps": ok / elapsed,
        **latency_summary(latencies),
    }


async def main() -> None:
    spec: dict[str, Any] = json.loads(sys.stdin.read())
    raise_fd_limit()
    requests = build(spec)
    host, port = "127.0.0.1", int(spec["port"])
    if spec["mode"] == "closed":
        result = await closed_loop(
            host, port, requests, int(spec["concurrency"]), float(spec["seconds"])
        )
    else:
        result = await open_loop(
            host, port, requests, float(spec["rate"]), int(spec.get("concurrency", 256))
        )
    print(json.dumps(result), flush=True)  # noqa: T201 - the result, read by the bench


if __name__ == "__main__":
    uvloop.run(main())
