"""The supervisor wall in a real browser: its figures follow the queue live."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Browser, expect

from tests.browser.conftest import Stack
from tests.browser.support import WAIT_MS, CustomerChat, PageProblems, needs_chromium, sign_in

pytestmark = [pytest.mark.browser, needs_chromium]

ADA = "ada@demo.omniroute.dev"
SAM = "sam@demo.omniroute.dev"
# GET /v1/analytics/csat answers 404 until the analytics endpoint is deployed.
CSAT_MISSING = "status of 404"


async def set_status(stack: Stack, email: str, status: str) -> None:
    token = await stack.token(email)
    async with httpx.AsyncClient(base_url=stack.api) as client:
        answer = await client.put(
            "/v1/me/status", json={"status": status}, headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 200, answer.text


async def test_the_wall_follows_the_queue_and_the_agents(stack: Stack, browser: Browser) -> None:
    await set_status(stack, ADA, "away")  # nobody online: a new chat has to wait
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    problems = PageProblems(page, expected=(CSAT_MISSING,))
    await sign_in(page, f"{stack.api}/console/wall", SAM)
    await expect(page.locator("#connection")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS
    )

    waiting = page.locator("#queue-total .value")
    tier1 = page.locator('[data-queue="Tier 1"] .depth')
    await expect(waiting).to_have_text("0", timeout=WAIT_MS)
    await expect(page.locator("#agents-online .value")).to_have_text("0")
    await expect(page.locator("#csat-empty")).to_have_text("No CSAT data yet.")
    await expect(page.locator("#sla-breached .value")).to_have_text("0")

    customer = await CustomerChat.open(stack.ingest, "Noor")
    await customer.say("Is anyone there?")
    await expect(waiting).to_have_text("1", timeout=WAIT_MS)
    await expect(tier1).to_have_text("1")
    await expect(page.locator("#volume-total")).to_have_text(
        "1 conversation in the last 24 hours", timeout=WAIT_MS
    )

    await set_status(stack, ADA, "online")  # Ada pulls the waiting chat at once
    await expect(waiting).to_have_text("0", timeout=WAIT_MS)
    await expect(page.locator("#agents-online .value")).to_have_text("1", timeout=WAIT_MS)
    ada_row = page.locator("#agents tr", has_text="Ada (tier 1)")
    await expect(ada_row).to_contain_text("online")
    await expect(ada_row).to_contain_text("1 / 3")
    assert problems.errors == [], problems.errors


async def test_the_wall_is_for_supervisors(stack: Stack, browser: Browser) -> None:
    page = await browser.new_page()
    await sign_in(page, f"{stack.api}/console/wall", ADA)
    await expect(page.locator("[role=alert]")).to_contain_text(
        "for supervisors and admins", timeout=WAIT_MS
    )
    assert await page.locator("#queues").count() == 0


async def test_the_wall_draws_csat_in_the_analytics_contract(
    stack: Stack, browser: Browser
) -> None:
    # GET /v1/analytics/csat is built in parallel (analytics); until it is merged the
    # browser answers it here with the agreed shape, so the drawing itself is checked.
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    csat = {"count": 8, "average": 4.25, "distribution": {"1": 0, "2": 1, "3": 1, "4": 1, "5": 5}}
    await page.route(
        "**/v1/analytics/csat",
        lambda route: route.fulfill(status=200, json=csat),
    )
    problems = PageProblems(page)
    await sign_in(page, f"{stack.api}/console/wall", SAM)
    await expect(page.locator("#csat-average .value")).to_have_text("4.25", timeout=WAIT_MS)
    await expect(page.locator("#csat-average")).to_have_attribute("data-level", "good")
    bars = page.locator("#csat svg rect")
    await expect(bars).to_have_count(5)
    heights = [float(await bars.nth(i).get_attribute("height") or "0") for i in range(5)]
    assert heights[0] == 0
    assert heights[1] == heights[2] == heights[3] > 0
    assert heights[4] == max(heights)
    assert problems.errors == [], problems.errors
