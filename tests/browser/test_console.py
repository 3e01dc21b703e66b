"""The agent console in a real browser: live conversations, replies, notes, routing,
resolution, and a network loss bridged by resuming from the last seq."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
import websockets
from playwright.async_api import Browser, expect

from tests.browser.conftest import Stack
from tests.browser.support import WAIT_MS, CustomerChat, PageProblems, needs_chromium, sign_in

pytestmark = [pytest.mark.browser, needs_chromium]

ADA = "ada@demo.omniroute.dev"
CY = "cy@demo.omniroute.dev"
HOSTILE = '<img src=x onerror="window.__pwned = 1">Hi, my order is <b>late</b>'


async def test_agent_sees_the_customer_live_replies_notes_and_resolves(
    stack: Stack, browser: Browser
) -> None:
    page = await browser.new_page()
    problems = PageProblems(page)
    await sign_in(page, f"{stack.api}/console", ADA)
    await expect(page.locator("#connection")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS
    )
    await expect(page.locator("#agent-name")).to_have_text("Ada (tier 1)")

    customer = await CustomerChat.open(stack.ingest, "Grace")
    await customer.say(HOSTILE)

    # Pushed over the socket: nobody reloads the page.
    item = page.locator("#mine li.conversation-item")
    await expect(item).to_have_count(1, timeout=WAIT_MS)
    await expect(item.locator(".contact")).to_have_text("Grace")
    await expect(item.locator(".channel")).to_have_attribute("data-channel", "webchat")
    await item.locator("button").click()

    inbound = page.locator("#timeline li[data-direction=inbound] .message-text")
    await expect(inbound).to_have_text(HOSTILE, timeout=WAIT_MS)
    # The customer's markup is text: no element was made of it and nothing ran.
    assert await page.locator("#timeline img, #timeline b").count() == 0
    assert await page.evaluate("window.__pwned") is None

    routing = page.locator("#routing")
    await expect(routing.locator(".assignments li")).to_contain_text("new_conversation")
    await expect(routing).to_contain_text("1 eligible")

    async with websockets.connect(customer.socket_url) as customer_socket:
        await customer_socket.send(json.dumps({"type": "auth", "token": customer.token}))
        assert json.loads(await customer_socket.recv())["type"] == "ready"
        await page.fill("#composer-text", "Sorry for the wait! It ships today.")
        await page.click("#send-reply")
        await expect(
            page.locator("#timeline li[data-direction=outbound] .message-text")
        ).to_have_text("Sorry for the wait! It ships today.", timeout=WAIT_MS)
        frame = json.loads(await asyncio.wait_for(customer_socket.recv(), WAIT_MS / 1000))
    assert frame["type"] == "message"
    assert frame["text"] == "Sorry for the wait! It ships today."

    await page.fill("#composer-text", "Checked the warehouse: parcel 4411.")
    await page.click("#add-note")
    await expect(page.locator("#timeline li[data-direction=note] .message-text")).to_have_text(
        "Checked the warehouse: parcel 4411.", timeout=WAIT_MS
    )

    await page.select_option("#resolve-form select[name=outcome_code]", "answered")
    await page.click("#resolve-form button[type=submit]")
    await expect(page.locator("#conversation-status")).to_have_text("resolved", timeout=WAIT_MS)
    await expect(page.locator("#mine li.empty")).to_have_count(1, timeout=WAIT_MS)

    token = await stack.token(ADA)
    async with httpx.AsyncClient(base_url=stack.api) as client:
        mine = await client.get(
            "/v1/conversations",
            params={"assignee": "me"},
            headers={"Authorization": f"Bearer {token}"},
        )
    [conversation] = mine.json()["items"]
    assert conversation["status"] == "resolved"
    assert problems.errors == []


async def test_console_catches_up_after_a_network_loss_without_gaps_or_repeats(
    stack: Stack, browser: Browser
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    # While offline, the browser reports the requests and socket attempts it refused.
    problems = PageProblems(page, expected=("ERR_INTERNET_DISCONNECTED",))
    await sign_in(page, f"{stack.api}/console", ADA)
    connection = page.locator("#connection")
    await expect(connection).to_have_attribute("data-state", "live", timeout=WAIT_MS)

    customer = await CustomerChat.open(stack.ingest, "Lin")
    await customer.say("first")
    await page.locator("#mine li.conversation-item button").click(timeout=WAIT_MS)
    inbound = page.locator("#timeline li[data-direction=inbound] .message-text")
    await expect(inbound).to_have_text(["first"], timeout=WAIT_MS)

    await context.set_offline(True)
    await expect(connection).to_have_attribute(
        "data-state", re.compile("offline|reconnecting"), timeout=WAIT_MS
    )
    await customer.say("second")
    await customer.say("third")
    await _stored_inbound(stack, 3)
    # Still cut off: what was said meanwhile has not reached the page.
    await expect(inbound).to_have_text(["first"])

    await context.set_offline(False)
    await expect(connection).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await expect(inbound).to_have_text(["first", "second", "third"], timeout=WAIT_MS)
    await customer.say("fourth")
    await expect(inbound).to_have_text(["first", "second", "third", "fourth"], timeout=WAIT_MS)
    assert problems.errors == [], problems.errors
    await context.close()


async def _stored_inbound(stack: Stack, count: int) -> None:
    """Wait until the router stored ``count`` customer messages (bounded)."""
    token = await stack.token(ADA)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.api, headers=headers) as client:
        for _ in range(300):
            [conversation] = (await client.get("/v1/conversations")).json()["items"]
            messages = (await client.get(f"/v1/conversations/{conversation['id']}/messages")).json()
            if sum(m["direction"] == "inbound" for m in messages) >= count:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the router did not store {count} inbound messages")


async def test_agent_escalates_and_transfers_from_the_console(
    stack: Stack, browser: Browser
) -> None:
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    problems = PageProblems(page)
    await sign_in(page, f"{stack.api}/console", ADA)
    await expect(page.locator("#connection")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS
    )
    for name in ("Ines", "Jon"):
        await (await CustomerChat.open(stack.ingest, name)).say(f"{name} needs a refund")
    items = page.locator("#mine li.conversation-item")
    await expect(items).to_have_count(2, timeout=WAIT_MS)
    await set_status(stack, CY, "online")  # tier 2 and the billing team

    await items.filter(has_text="Ines").locator("button").click()
    await expect(page.locator("#contact-name")).to_have_text("Ines", timeout=WAIT_MS)
    await page.fill("#escalate-form input[name=reason]", "Needs a refund decision")
    await page.click("#escalate-form button[type=submit]")
    await expect(items).to_have_count(1, timeout=WAIT_MS)  # handed on, live
    await expect(page.locator(".conversation-head .pill").last).to_have_text("tier 2")

    await items.filter(has_text="Jon").locator("button").click()
    await expect(page.locator("#contact-name")).to_have_text("Jon", timeout=WAIT_MS)
    await page.fill("#transfer-form input[name=reason]", "Billing question")
    await page.fill("#transfer-form input[name=team]", "billing")
    await page.click("#transfer-form button[type=submit]")
    await expect(page.locator("#mine li.empty")).to_have_count(1, timeout=WAIT_MS)
    # The reason stays with the conversation as an internal note.
    await expect(page.locator("#timeline li[data-direction=note]")).to_contain_text(
        "Billing question", timeout=WAIT_MS
    )

    token = await stack.token(CY)
    async with httpx.AsyncClient(base_url=stack.api) as client:
        cy_has = await client.get(
            "/v1/conversations",
            params={"assignee": "me"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert len(cy_has.json()["items"]) == 2
    assert problems.errors == [], problems.errors


async def set_status(stack: Stack, email: str, status: str) -> None:
    token = await stack.token(email)
    async with httpx.AsyncClient(base_url=stack.api) as client:
        answer = await client.put(
            "/v1/me/status", json={"status": status}, headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 200, answer.text
