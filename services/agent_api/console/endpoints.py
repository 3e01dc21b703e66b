"""``/console`` (agent desk) and ``/console/wall`` (supervisor wall): plain HTML, CSS and
ES modules, no build step. They use the agent API of the same origin, so no CORS is
involved, and a strict Content-Security-Policy keeps any script but ours out."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR: Final = Path(__file__).parent / "static"
ASSETS_PATH: Final = "/console/assets"

# Same-origin only: scripts, styles and API/WebSocket calls ('self' covers ws: to the
# same host); no inline script, no framing.
CONSOLE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONSOLE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=SECURITY_HEADERS)


@router.get("/console")
async def console_page() -> FileResponse:
    return _page("index.html")


@router.get("/console/")
async def console_slash() -> RedirectResponse:
    return RedirectResponse("/console", status_code=308)


@router.get("/console/wall")
async def wall_page() -> FileResponse:
    return _page("wall.html")


def install_console(app: FastAPI) -> None:
    """Serve the console pages and their assets on ``app``."""
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="console-assets")
