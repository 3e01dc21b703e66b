"""``python -m devmode.screenshots`` (``make screenshots``): the README's pictures.

Starts ``python -m devmode`` (the single process of ``make run``) on free ports with a
fresh SQLite file, lets a few customers write (web chat through the real widget and
the HTTP protocol, one email through the SMTP listener), has Ada answer in the console,
and photographs the console, the supervisor wall and the widget with Debian's Chromium
(driven by Playwright). Everything shown went through the running system.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Final

import aiosmtplib
import httpx
from playwright.async_api import Browser, Page, ViewportSize, async_playwright, expect

from devmode.seed import DEMO_PASSWORD, DEMO_WORKSPACE_SLUG, demo_support_address

CHROMIUM: Final = "/usr/bin/chromium"
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
VIEWPORT: Final = ViewportSize(width=1440, height=900)
WAIT_MS: Final = 30_000
ADA: Final = f"ada@{DEMO_WORKSPACE_SLUG}.omniroute.dev"
CY: Final = f"cy@{DEMO_WORKSPACE_SLUG}.omniroute.dev"
SAM: Final = f"sam@{DEMO_WORKSPACE_SLUG}.omniroute.dev"
WAITING_CUSTOMERS: Final = (
    ("Omar", "Can I still change the delivery address of order #5120?"),
    ("Lena", "Do you ship to Norway, and how long does it take?"),
    ("Priya", "I was charged twice for my subscription this month."),
    ("Tom", "Where do I find the invoice for my last order?"),
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class DevSystem:
    api: str
    ingest: str
    smtp_port: int


@contextlib.asynccontextmanager
async def dev_system(workdir: Path) -> AsyncIterator[DevSystem]:
    """``python -m devmode`` on free ports until the block ends."""
    ports = {name: free_port() for name in ("ingest", "api", "router", "smtp")}
    env = {
        **os.environ,
        "OMNI_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'screenshots.db'}",
        "OMNI_KAFKA_BOOTSTRAP_SERVERS": "",
        "OMNI_INGEST_PORT": str(ports["ingest"]),
        "OMNI_AGENT_API_PORT": str(ports["api"]),
        "OMNI_ROUTER_PORT": str(ports["router"]),
        "OMNI_SMTP_LISTEN_PORT": str(ports["smtp"]),
        "OMNI_ATTACHMENT_STORE_DIR": str(workdir / "attachments"),
    }
    log = (workdir / "devmode.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devmode", env=env, stdout=log, stderr=log
    )
    system = DevSystem(
        api=f"http://127.0.0.1:{ports['api']}",
        ingest=f"http://127.0.0.1:{ports['ingest']}",
        smtp_port=ports["smtp"],
    )
    try:
        await _ready(process, system)
        yield system
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def _ready(process: asyncio.subprocess.Process, system: DevSystem) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if process.returncode is not None:
                raise RuntimeError("devmode exited; see devmode.log")
            ready = 0
            for base in (system.api, system.ingest):
                with contextlib.suppress(httpx.HTTPError):
                    ready += (await client.get(f"{base}/readyz")).status_code == 200
            if ready == 2:
                return
            await asyncio.sleep(0.2)
    raise RuntimeError("devmode did not become ready")


class Desk:
    """The agent API as one demo agent."""

    def __init__(self, api: str, email: str) -> None:
        self.client = httpx.AsyncClient(base_url=api)
        self.email = email

    async def __aenter__(self) -> Desk:
        answer = await self.client.post(
            "/v1/auth/token",
            json={"workspace": DEMO_WORKSPACE_SLUG, "email": self.email, "password": DEMO_PASSWORD},
        )
        answer.raise_for_status()
        self.client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.client.aclose()

    async def call(self, method: str, path: str, json: object = None) -> httpx.Response:
        answer = await self.client.request(method, path, json=json)
        answer.raise_for_status()
        return answer


async def customer_writes(ingest: str, name: str, text: str) -> None:
    async with httpx.AsyncClient(base_url=ingest) as client:
        opened = await client.post(
            f"/v1/webchat/{DEMO_WORKSPACE_SLUG}/sessions", json={"display_name": name}
        )
        opened.raise_for_status()
        session = opened.json()
        sent = await client.post(
            f"/v1/webchat/sessions/{session['session_id']}/messages",
            headers={"Authorization": f"Bearer {session['session_token']}"},
            json={"text": text},
        )
        sent.raise_for_status()


async def customer_emails(smtp_port: int) -> None:
    message = EmailMessage()
    message["From"] = "Lee Park <lee@example.com>"
    message["To"] = demo_support_address()
    message["Subject"] = "Broken zipper"
    message.set_content("The zipper of my new jacket broke after a week. Can I get a new one?")
    await aiosmtplib.send(message, hostname="127.0.0.1", port=smtp_port)


async def sign_in(page: Page, url: str, email: str) -> None:
    await page.goto(url)
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", DEMO_PASSWORD)
    await page.click("form.sign-in button[type=submit]")
    await expect(page.locator("#connection")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS
    )


async def until_conversations(sam: Desk, count: int) -> None:
    for _ in range(300):
        page = (await sam.call("GET", "/v1/conversations?limit=100")).json()
        if len(page["items"]) >= count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"expected {count} conversations")


async def photograph(browser: Browser, system: DevSystem, out: Path) -> None:
    async with Desk(system.api, CY) as cy, Desk(system.api, SAM) as sam:
        await cy.call("PUT", "/v1/me/status", {"status": "away"})

        # Grace writes in the widget on the demo page, as a customer would.
        customer = await (
            await browser.new_context(viewport=ViewportSize(width=900, height=760))
        ).new_page()
        await customer.goto(f"{system.ingest}/widget/demo?workspace={DEMO_WORKSPACE_SLUG}")
        await customer.click("[data-omniroute=launcher]", timeout=WAIT_MS)
        chat = customer.frame_locator("iframe[data-omniroute=chat]")
        await chat.locator("#chat-name").fill("Grace")
        await chat.locator("#chat-text").fill(
            "Hi! My order #1234 hasn't arrived yet, it's been 9 days."
        )
        await chat.locator("#chat-send").click()
        await expect(chat.locator("#chat-state")).to_have_attribute(
            "data-state", "live", timeout=WAIT_MS
        )
        await until_conversations(sam, 1)
        await customer_emails(system.smtp_port)
        for name, text in WAITING_CUSTOMERS:
            await customer_writes(system.ingest, name, text)
        await until_conversations(sam, 2 + len(WAITING_CUSTOMERS))

        agent = await (await browser.new_context(viewport=VIEWPORT)).new_page()
        await sign_in(agent, f"{system.api}/console", ADA)
        grace = agent.locator("#mine li.conversation-item", has_text="Grace")
        await grace.locator("button").click(timeout=WAIT_MS)
        await expect(agent.locator("#timeline li[data-direction=inbound]")).to_have_count(
            1, timeout=WAIT_MS
        )
        await agent.fill("#composer-text", "Checked with the carrier: it is in the depot in Leeds.")
        await agent.click("#add-note")
        await expect(agent.locator("#timeline li[data-direction=note]")).to_have_count(
            1, timeout=WAIT_MS
        )
        await agent.fill(
            "#composer-text", "Sorry for the wait, Grace! Your parcel arrives tomorrow morning."
        )
        await agent.click("#send-reply")
        await expect(chat.locator(".bubble[data-direction=outbound]")).to_have_count(
            1, timeout=WAIT_MS
        )
        await chat.locator("#chat-text").fill("That's great, thank you!")
        await chat.locator("#chat-send").click()
        await expect(agent.locator("#timeline li[data-direction=inbound]")).to_have_count(
            2, timeout=WAIT_MS
        )
        await agent.locator("#routing details").evaluate("node => { node.open = true; }")
        await agent.screenshot(path=str(out / "console.png"))
        await customer.screenshot(path=str(out / "widget.png"))

        wall = await (await browser.new_context(viewport=VIEWPORT)).new_page()
        await sign_in(wall, f"{system.api}/console/wall", SAM)
        await expect(wall.locator("#queue-total .value")).not_to_have_text("0", timeout=WAIT_MS)
        await wall.screenshot(path=str(out / "wall.png"), full_page=True)


async def main(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="omniroute-screenshots-") as tmp:
        async with dev_system(Path(tmp)) as system, async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                await photograph(browser, system, out)
            finally:
                await browser.close()
    print(f"wrote console.png, wall.png and widget.png to {out}")  # noqa: T201


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    target: Path = parser.parse_args().out
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(target))
