"""Baseline servers, each its own process.

- ``echo PORT``: a bare Starlette app answering ``POST`` with the body it got, under the
  same uvicorn settings as the services (``shared.serve.serve``).
- ``broadcast PORT``: a plain ``websockets`` server; every client on ``/`` gets each frame
  a client on ``/control`` asks for (``{"frames": K, "size": S}``), via
  ``websockets.broadcast``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, cast

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from websockets.asyncio.server import ServerConnection, broadcast, serve

from shared.serve import serve as serve_app
from shared.settings import Settings


async def echo(request: Request) -> Response:
    return Response(await request.body(), status_code=202, media_type="application/json")


def run_echo(port: int) -> None:
    app = Starlette(routes=[Route("/{path:path}", echo, methods=["POST"])])
    settings = Settings(log_level="WARNING")
    serve_app(cast(FastAPI, app), settings=settings, service="echo", host="127.0.0.1", port=port)


def frame_of(index: int, size: int) -> str:
    """A frame shaped like agent_api's ``message.created`` frame."""
    frame: dict[str, Any] = {
        "type": "message.created",
        "seq": index,
        "event_id": f"{index:032x}",
        "time": "2026-01-01T00:00:00+00:00",
        "correlation_id": None,
        "data": {"text": f"bench#{index}#" + "x" * size},
    }
    return json.dumps(frame)


async def run_broadcast(port: int) -> None:
    clients: set[ServerConnection] = set()

    async def handler(connection: ServerConnection) -> None:
        if connection.request is not None and connection.request.path == "/control":
            async for raw in connection:
                order = json.loads(raw)
                for index in range(1, int(order["frames"]) + 1):
                    broadcast(clients, frame_of(index, int(order["size"])))
                    await asyncio.sleep(0)  # let the writes go out, as a real server would
                await connection.send(json.dumps({"done": True}))
            return
        clients.add(connection)
        try:
            await connection.send(json.dumps({"type": "ready"}))
            await connection.wait_closed()
        finally:
            clients.discard(connection)

    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None):
        await asyncio.Future()


if __name__ == "__main__":
    from tests.perf.common import raise_fd_limit

    raise_fd_limit()
    kind, port_text = sys.argv[1], sys.argv[2]
    if kind == "echo":
        run_echo(int(port_text))
    else:
        import uvloop

        uvloop.run(run_broadcast(int(port_text)))
