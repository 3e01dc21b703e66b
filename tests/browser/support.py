"""The real browser of the browser tests: Debian's Chromium, driven by Playwright."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import httpx
import pytest
from playwright.async_api import Page

from devmode.seed import DEMO_PASSWORD, DEMO_WORKSPACE_SLUG

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# How long an expectation may wait for the page to reach a state. A bound against
# hanging on a shared, busy machine, not a measure of speed.
WAIT_MS: Final = 30_000

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"Debian's chromium is not installed at {CHROMIUM} (`bash deploy/chromium.sh`)",
)


async def sign_in(page: Page, url: str, email: str) -> None:
    """Open ``url`` (the console or the wall) and sign in as a demo agent."""
    await page.goto(url)
    await page.fill("input[name=workspace]", DEMO_WORKSPACE_SLUG)
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", DEMO_PASSWORD)
    await page.click("form.sign-in button[type=submit]")


class PageProblems:
    """Script errors and console errors of a page (a CSP refusal shows up here too)."""

    def __init__(self, page: Page, *, expected: tuple[str, ...] = ()) -> None:
        self.errors: list[str] = []
        self._expected = expected
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("console", self._console)

    def _console(self, message: object) -> None:
        kind = getattr(message, "type", "")
        text = str(getattr(message, "text", ""))
        if kind == "error" and not any(part in text for part in self._expected):
            self.errors.append(f"console: {text}")


class CustomerChat:
    """A web-chat customer speaking the widget's HTTP protocol (for tests whose subject
    is the agent's side)."""

    def __init__(self, ingest: str, session: dict[str, str]) -> None:
        self.ingest = ingest
        self.session_id = session["session_id"]
        self.token = session["session_token"]

    @classmethod
    async def open(cls, ingest: str, name: str) -> CustomerChat:
        async with httpx.AsyncClient(base_url=ingest) as client:
            answer = await client.post(
                f"/v1/webchat/{DEMO_WORKSPACE_SLUG}/sessions", json={"display_name": name}
            )
            answer.raise_for_status()
            return cls(ingest, answer.json())

    async def say(self, text: str) -> None:
        async with httpx.AsyncClient(base_url=self.ingest) as client:
            answer = await client.post(
                f"/v1/webchat/sessions/{self.session_id}/messages",
                headers={"Authorization": f"Bearer {self.token}"},
                json={"text": text},
            )
            assert answer.status_code == 202, answer.text

    @property
    def socket_url(self) -> str:
        return self.ingest.replace("http://", "ws://") + (
            f"/v1/webchat/sessions/{self.session_id}/ws"
        )
