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


@dataclass(frozen=True)
class MediaFetch:
    path: str
    username: str
    password: str


@dataclass
class TwilioStandIn:
    base_url: str
    recorder: Recorder
    failures: list[int] = field(default_factory=list)  # statuses to answer first
    # MMS media served at GET <path> (Basic auth required): path -> (content type, bytes)
    media: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    media_failures: list[int] = field(default_factory=list)  # statuses to answer first
    media_fetches: list[MediaFetch] = field(default_factory=list)
    credentials: tuple[str, str] | None = None  # when set, other credentials get 401

    def media_url(self, account_sid: str, message_sid: str, media_sid: str) -> str:
        return (
            f"{self.base_url}/2010-04-01/Accounts/{account_sid}/Messages/{message_sid}"
            f"/Media/{media_sid}"
        )


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

        def do_GET(self) -> None:
            stand_in: TwilioStandIn = state["stand_in"]
            scheme, _, encoded = (self.headers.get("authorization") or "").partition(" ")
            user, _, password = (
                base64.b64decode(encoded).decode().partition(":") if encoded else ("", "", "")
            )
            stand_in.media_fetches.append(MediaFetch(self.path, user, password))
            if stand_in.media_failures:
                status = stand_in.media_failures.pop(0)
                self._answer(status, {"code": 20503, "message": "Service unavailable"})
                return
            allowed = stand_in.credentials is None or stand_in.credentials == (user, password)
            if scheme != "Basic" or not allowed:
                self._answer(401, {"code": 20003, "message": "Authenticate"})
                return
            if self.path not in stand_in.media:
                self._answer(404, {"code": 20404, "message": "Not found"})
                return
            content_type, content = stand_in.media[self.path]
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

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
