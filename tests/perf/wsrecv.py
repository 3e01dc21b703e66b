"""WebSocket receiving clients, run as their own process (``python -m tests.perf.wsrecv``).

Spec on stdin: ``url``, ``sockets``, optional ``token`` (agent JWT, sent as the
``bearer`` subprotocol), ``expected`` frames per socket, ``idle_seconds``. Opens every
socket, waits for each ``ready`` frame, prints ``{"ready": …}``, then counts
``message.created`` frames whose text starts ``bench#<index>#`` and notes the wall-clock
receive time of each index on socket 0 (end-to-end latency is computed by the bench
from the sender's schedule). Prints one JSON result line at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect

from tests.perf.common import raise_fd_limit


async def open_socket(url: str, token: str | None) -> ClientConnection:
    subprotocols: Any = ["bearer", token] if token else None
    ws = await connect(
        url, subprotocols=subprotocols, compression=None, max_queue=None, open_timeout=120
    )
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("type") == "ready":
            return ws


async def main() -> None:
    spec: dict[str, Any] = json.loads(sys.stdin.read())
    raise_fd_limit()
    url: str = spec["url"]
    count = int(spec["sockets"])
    expected = int(spec["expected"])
    idle = float(spec.get("idle_seconds", 20))
    semaphore = asyncio.Semaphore(64)

    async def opened() -> ClientConnection:
        async with semaphore:
            return await open_socket(url, spec.get("token"))

    sockets = await asyncio.gather(*(opened() for _ in range(count)))
    print(json.dumps({"ready": len(sockets)}), flush=True)  # noqa: T201 - protocol line
    received = [0] * count
    arrival: dict[int, float] = {}
    first: list[float] = []
    last = [0.0]
    done = asyncio.Event()
    complete = [0]

    async def read(position: int, ws: ClientConnection) -> None:
        async for raw in ws:
            text = raw if isinstance(raw, str) else raw.decode()
            marker = text.find("bench#")
            if marker < 0:
                continue
            now = time.time()
            if not first:
                first.append(now)
            last[0] = now
            received[position] += 1
            if position == 0:
                end = text.index("#", marker + 6)
                arrival.setdefault(int(text[marker + 6 : end]), now)
            if received[position] == expected:
                complete[0] += 1
                if complete[0] == count:
                    done.set()

    readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
    deadline = time.monotonic() + float(spec.get("timeout_seconds", 300))
    seen = 0
    while not done.is_set() and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(done.wait(), timeout=idle)
        except TimeoutError:
            total = sum(received)
            if total == seen and total > 0:
                break  # nothing new for a whole idle period: report what arrived
            seen = total
    for task in readers:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    total = sum(received)
    elapsed = (last[0] - first[0]) if first else 0.0
    print(  # noqa: T201 - the result, read by the bench
        json.dumps(
            {
                "sockets": count,
                "frames": total,
                "expected_total": expected * count,
                "complete_sockets": complete[0],
                "first_wall": first[0] if first else None,
                "last_wall": last[0],
                "seconds": elapsed,
                "frames_per_second": total / elapsed if elapsed > 0 else 0.0,
                "arrival": {str(k): v for k, v in arrival.items()},
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    uvloop.run(main())
