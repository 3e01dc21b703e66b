"""The customer's side of web chat, served by ingest.

A site embeds one tag, ``<script src="https://ingest.example/widget.js"
data-workspace="acme">``. The script adds a launcher button that opens an iframe with
``/widget/chat`` from ingest itself, so the chat page calls ingest's web-chat API and
WebSocket on its own origin: no CORS grant is needed and the host page never sees the
session token. Which sites may frame the chat page is the workspace's origin allow-list,
sent as the page's CSP ``frame-ancestors``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Annotated, Final

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from services.ingest.adapters.webchat_endpoints import workspace_id_for
from services.ingest.deps import StateDep

STATIC_DIR: Final = Path(__file__).parent / "static"
WORKSPACE_SLUG: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"

# The chat page runs only our scripts and talks only to its own origin ('self' covers
# ws: to the same host); the sites that may frame it are the workspace's allowed origins.
CHAT_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": CHAT_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/widget.js")
async def widget_script() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "widget.js",
        media_type="text/javascript",
        headers={
            "Cache-Control": "public, max-age=300",
            "X-Content-Type-Options": "nosniff",
            # Sites that isolate themselves (COEP) may still load it.
            "Cross-Origin-Resource-Policy": "cross-origin",
        },
    )


@router.get("/widget/chat")
async def chat_page(
    workspace: Annotated[str, Query(pattern=WORKSPACE_SLUG)], ingest: StateDep
) -> FileResponse:
    """The chat page, frameable by the workspace's allowed origins (and ingest itself)."""
    policy = await ingest.webchat_origins.policy(await workspace_id_for(ingest, workspace))
    ancestors = policy.frame_ancestors()
    csp = CHAT_CSP if ancestors is None else f"{CHAT_CSP}; {ancestors}"
    return FileResponse(
        STATIC_DIR / "chat.html",
        media_type="text/html",
        headers={**_PAGE_HEADERS, "Content-Security-Policy": csp},
    )


@router.get("/widget/demo")
async def demo_page(
    workspace: Annotated[str, Query(pattern=WORKSPACE_SLUG)] = "demo",
) -> HTMLResponse:
    """A page embedding the widget the way a customer's site would."""
    slug = html.escape(workspace, quote=True)
    page = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Widget demo · {slug}</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/widget/assets/demo.css"></head>
<body>
<main>
<h1>Demo shop</h1>
<p>This page embeds the omniroute chat widget with one tag:</p>
<pre>&lt;script src="https://INGEST-HOST/widget.js"
        data-workspace="{slug}" async&gt;&lt;/script&gt;</pre>
<p>Open the chat at the bottom right and write; an agent answers in the console.</p>
</main>
<script src="/widget.js" data-workspace="{slug}" async></script>
</body>
</html>
"""
    # Like any host page it frames the chat page; here that page is on our own origin.
    csp = CHAT_CSP + "; frame-src 'self'"
    return HTMLResponse(page, headers={**_PAGE_HEADERS, "Content-Security-Policy": csp})


def install_widget(app: FastAPI) -> None:
    """Serve the widget script, its chat page and their assets on ``app``."""
    app.include_router(router)
    app.mount("/widget/assets", StaticFiles(directory=STATIC_DIR), name="widget-assets")
