"""Run a service's ASGI app under uvicorn with the project's logging."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from shared.logging import configure_logging
from shared.settings import Settings


def serve(app: FastAPI, *, settings: Settings, service: str, host: str, port: int) -> None:
    configure_logging(service=service, level=settings.log_level, json=settings.log_json)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        proxy_headers=True,
        timeout_graceful_shutdown=20,
        ws_max_size=settings.max_request_bytes,
    )
