"""A local stand-in of Twilio's Messages REST API: a real HTTP server on loopback."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from shared.channels.contract import Recorder


@dataclass(frozen=True)
class TwilioCall:
    path: str
    username: str
    password: str
    fields: dict[str, str]
    sid: str


@dataclass
class TwilioStandIn:
    base_url: str
    recorder: Recorder
    failures: list[int] = field(default_factory=list)  # statuses to answer first


@contextlib.contextmanager
def twilio_stand_in() -> Iterator[TwilioStandIn]:
    recorder = Recorder()
    state: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length).decode()
            stand_in: TwilioStandIn = state["stand_in"]
            if stand_in.failures:
                status = stand_in.failures.pop(0)
                self._answer(status, {"code": 20503, "message": "Service unavailable"})
                return
            scheme, _, encoded = (self.headers.get("authorization") or "").partition(" ")
            user, _, password = base64.b64decode(encoded).decode().partition(":")
            fields = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
            sid = "SM" + uuid.uuid4().hex
            if scheme != "Basic" or not self.path.endswith("/Messages.json"):
                self._answer(401, {"code": 20003, "message": "Authenticate"})
                return
            recorder.record(TwilioCall(self.path, user, password, fields, sid))
            self._answer(201, {"sid": sid, "status": "queued", "to": fields.get("To")})

        def _answer(self, status: int, data: dict[str, Any]) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["stand_in"] = TwilioStandIn(f"http://127.0.0.1:{server.server_port}", recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["stand_in"]
    finally:
        server.shutdown()
        server.server_close()
