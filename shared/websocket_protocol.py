"""uvicorn's WebSocket protocol, trimmed of what every open connection carried unused.

An agent_api replica holds thousands of sockets for hours, so a few KiB each matter
(benchmark B5). The protocol is uvicorn's own (``websockets`` sans-I/O, what ``ws="auto"``
picks) with two changes:

- the handshake response is let go once sent, with its header map (uvicorn kept it,
  and the parsed request, for the connection's life; the request stays alive anyway,
  held by the ``websockets`` parser): about 2 KiB;
- the queue of received ASGI events is a :class:`~shared.queues.SingleConsumerQueue`
  instead of an ``asyncio.Queue``: the application's ``receive`` is its one consumer,
  and it is nearly always empty: about 2.2 KiB.

Framing, keepalive pings, flow control, close codes and shutdown (1012) are uvicorn's.
``tests/unit/test_websocket_protocol.py`` runs them through this class.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from shared.queues import SingleConsumerQueue


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn only calls put_nowait, get and empty on it.
        self.queue = SingleConsumerQueue()  # type: ignore[assignment]

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # Only the handshake reads these (handle_connect, then send of the accept).
            self.__dict__.pop("request", None)
            self.__dict__.pop("response", None)
