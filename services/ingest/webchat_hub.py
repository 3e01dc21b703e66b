"""Customer chat WebSockets held by this ingest replica, by session id."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from shared.metrics import WEBSOCKET_CONNECTIONS
from shared.websocket import CLOSE_SERVICE_RESTART, BoundedSender


class WebChatHub:
    def __init__(self) -> None:
        self._by_session: dict[str, set[BoundedSender]] = defaultdict(set)

    def add(self, session_id: str, sender: BoundedSender) -> None:
        self._by_session[session_id].add(sender)
        WEBSOCKET_CONNECTIONS.labels(service="ingest").inc()

    def remove(self, session_id: str, sender: BoundedSender) -> None:
        senders = self._by_session.get(session_id)
        if senders is not None and sender in senders:
            senders.discard(sender)
            WEBSOCKET_CONNECTIONS.labels(service="ingest").dec()
            if not senders:
                del self._by_session[session_id]

    def deliver(self, session_id: str, frame: dict[str, Any]) -> int:
        """Offer a frame to every socket of the session here; the count that took it."""
        return sum(
            1 for sender in list(self._by_session.get(session_id, ())) if sender.offer(frame)
        )

    async def close_all(self) -> None:
        for senders in list(self._by_session.values()):
            for sender in list(senders):
                await sender.close(CLOSE_SERVICE_RESTART, "server restarting; reconnect")
