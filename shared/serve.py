"""Run a service's ASGI app under uvicorn with the project's logging and shutdown."""

from __future__ import annotations

from types import FrameType

import uvicorn
from fastapi import FastAPI

from shared.logging import configure_logging
from shared.settings import Settings


class GracefulServer(uvicorn.Server):
    """On SIGTERM, readiness fails at once (``/readyz`` answers 503) while uvicorn stops
    accepting, finishes in-flight requests, closes WebSockets with 1012 and runs the
    app's shutdown (consumers commit what finished)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._app.state.shutting_down = True
        super().handle_exit(sig, frame)


def serve(app: FastAPI, *, settings: Settings, service: str, host: str, port: int) -> None:
    configure_logging(
        service=service, level=settings.log_level, json=settings.log_json, log_pii=settings.log_pii
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        proxy_headers=True,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        ws_max_size=settings.max_request_bytes,
    )
    GracefulServer(config, app).run()
