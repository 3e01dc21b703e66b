"""A local stand-in of Meta's Graph API send endpoints: a real HTTP server on loopback.

``POST /{version}/{id}/messages`` with ``Authorization: Bearer <token>`` and a JSON body
answers like the Messenger Send API (``message_id``) or, for WhatsApp
(``messaging_product``), like the Cloud API (``messages[0].id`` = wamid).
``POST /{version}/{comment-id}/comments`` (a Facebook comment reply) and
``POST /{version}/{ig-comment-id}/replies`` (Instagram) with ``{"message": ...}`` answer
the new comment's ``{"id": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shared.channels.contract import Recorder


@dataclass(frozen=True)
class MetaCall:
    path: str
    token: str
    body: dict[str, Any]
    message_id: str


@dataclass
class MetaStandIn:
    base_url: str
    recorder: Recorder
    failures: list[int] = field(default_factory=list)  # statuses to answer first


@contextlib.contextmanager
def meta_stand_in() -> Iterator[MetaStandIn]:
    recorder = Recorder()
    state: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            stand_in: MetaStandIn = state["stand_in"]
            if stand_in.failures:
                status = stand_in.failures.pop(0)
                self._answer(status, {"error": {"message": "Service unavailable", "code": 2}})
                return
            scheme, _, token = (self.headers.get("authorization") or "").partition(" ")
            if scheme != "Bearer" or not token:
                self._answer(401, {"error": {"message": "Invalid OAuth access token", "code": 190}})
                return
            edge = self.path.rsplit("/", 1)[-1]
            if edge not in ("messages", "comments", "replies"):
                self._answer(400, {"error": {"message": "Unknown path components", "code": 2500}})
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._answer(400, {"error": {"message": "Invalid JSON", "code": 100}})
                return
            if edge != "messages":
                if not isinstance(body.get("message"), str) or not body["message"]:
                    self._answer(400, {"error": {"message": "(#100) message is required"}})
                    return
                pid = uuid.uuid4().hex
                answer: dict[str, Any] = {"id": pid}
            elif body.get("messaging_product") == "whatsapp":
                pid = "wamid." + uuid.uuid4().hex
                answer = {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
                    "messages": [{"id": pid}],
                }
            else:
                pid = "m_" + uuid.uuid4().hex
                answer = {
                    "recipient_id": (body.get("recipient") or {}).get("id"),
                    "message_id": pid,
                }
            recorder.record(MetaCall(self.path, token, body, pid))
            self._answer(200, answer)

        def _answer(self, status: int, data: dict[str, Any]) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["stand_in"] = MetaStandIn(f"http://127.0.0.1:{server.server_port}", recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["stand_in"]
    finally:
        server.shutdown()
        server.server_close()
