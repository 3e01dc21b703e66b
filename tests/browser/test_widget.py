"""The whole web-chat journey in a real browser: a customer on a third-party site
writes in the embedded widget, the supervisor wall counts the wait, the agent's console
shows the chat live, the agent replies and the customer reads the reply."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Browser, expect
from sqlalchemy import update
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from shared.db.models import Agent
from tests.browser.conftest import Stack
from tests.browser.support import WAIT_MS, PageProblems, needs_chromium, sign_in
from tests.conftest import served

pytestmark = [pytest.mark.browser, needs_chromium]

ADA = "ada@demo.omniroute.dev"
SAM = "sam@demo.omniroute.dev"
CY = "cy@demo.omniroute.dev"
CSAT_MISSING = "status of 404"


@contextlib.asynccontextmanager
async def site(stack: Stack, title: str) -> AsyncIterator[str]:
    """A customer's website on another origin, embedding the widget with one tag."""
    page = f"""<!doctype html><html><head><title>{title}</title><link rel="icon" href="data:,">
</head><body><h1>{title}</h1>
<script src="{stack.ingest}/widget.js" data-workspace="demo" async></script>
</body></html>"""

    async def home(_: object) -> HTMLResponse:
        return HTMLResponse(page)

    async with served(Starlette(routes=[Route("/", home)])) as url:  # type: ignore[arg-type]
        yield url


async def allow_origins(stack: Stack, origins: list[str]) -> None:
    """What a workspace admin does in the agent API: list the sites the widget is on."""
    async with stack.database.sessions() as session:
        await session.execute(update(Agent).where(Agent.email == CY).values(role="admin"))
        await session.commit()
    token = await stack.token(CY)
    async with httpx.AsyncClient(base_url=stack.api) as client:
        answer = await client.put(
            "/v1/channels/webchat/settings",
            json={"allowed_origins": origins},
            headers={"authorization": f"Bearer {token}"},
        )
        answer.raise_for_status()


@pytest.fixture
async def shop(stack: Stack) -> AsyncIterator[str]:
    """The shop, on the workspace's list of allowed origins."""
    async with site(stack, "Shoes &amp; more") as url:
        await allow_origins(stack, [url])
        yield url


async def test_customer_and_agent_talk_through_widget_and_console(
    stack: Stack, browser: Browser, shop: str
) -> None:
    agent = await (await browser.new_context()).new_page()
    agent_problems = PageProblems(agent)
    await sign_in(agent, f"{stack.api}/console", ADA)
    await expect(agent.locator("#connection")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS
    )
    await agent.select_option("#status", "away")
    await expect(agent.locator("#status")).to_have_value("away")

    wall = await (await browser.new_context()).new_page()
    wall_problems = PageProblems(wall, expected=(CSAT_MISSING,))
    await sign_in(wall, f"{stack.api}/console/wall", SAM)
    waiting = wall.locator("#queue-total .value")
    await expect(waiting).to_have_text("0", timeout=WAIT_MS)

    customer = await (await browser.new_context()).new_page()
    customer_problems = PageProblems(customer)
    await customer.goto(shop)
    await customer.click("[data-omniroute=launcher]", timeout=WAIT_MS)
    chat = customer.frame_locator("iframe[data-omniroute=chat]")
    await chat.locator("#chat-name").fill("Grace")
    await chat.locator("#chat-text").fill("Hi, my order #1234 is late <script>alert(1)</script>")
    await chat.locator("#chat-send").click()
    mine = chat.locator(".bubble[data-direction=inbound]")
    await expect(mine).to_have_text("Hi, my order #1234 is late <script>alert(1)</script>")
    await expect(mine).not_to_have_attribute("data-pending", "yes", timeout=WAIT_MS)
    await expect(chat.locator("#chat-state")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS
    )

    # Ada is away: the chat waits, and the wall shows it.
    await expect(waiting).to_have_text("1", timeout=WAIT_MS)

    await agent.select_option("#status", "online")  # going online pulls the waiting chat
    item = agent.locator("#mine li.conversation-item")
    await expect(item).to_have_count(1, timeout=WAIT_MS)
    await expect(item.locator(".contact")).to_have_text("Grace")
    await expect(waiting).to_have_text("0", timeout=WAIT_MS)
    await item.locator("button").click()
    await expect(agent.locator("#timeline li[data-direction=inbound] .message-text")).to_have_text(
        "Hi, my order #1234 is late <script>alert(1)</script>", timeout=WAIT_MS
    )

    await agent.fill("#composer-text", "Hi Grace, it left our warehouse this morning.")
    await agent.click("#send-reply")
    reply = chat.locator(
        ".bubble[data-direction=outbound]", has_text="Hi Grace, it left our warehouse this morning."
    )
    await expect(reply).to_have_count(1, timeout=WAIT_MS)
    await expect(reply.locator(".who")).to_have_text("Ada (tier 1)")
    # Besides the reply, the customer may have been sent a queue notice while waiting.
    shown = await chat.locator(".bubble").count()

    # The session outlives a reload: the history comes back in order.
    await customer.reload()
    await customer.click("[data-omniroute=launcher]", timeout=WAIT_MS)
    chat = customer.frame_locator("iframe[data-omniroute=chat]")
    await expect(chat.locator(".bubble")).to_have_count(shown, timeout=WAIT_MS)
    await expect(chat.locator(".bubble").first).to_have_attribute("data-direction", "inbound")
    await expect(chat.locator(".bubble").last).to_contain_text("it left our warehouse")

    assert agent_problems.errors == [], agent_problems.errors
    assert wall_problems.errors == [], wall_problems.errors
    assert customer_problems.errors == [], customer_problems.errors


async def test_widget_shows_a_reply_sent_while_the_customer_was_offline(
    stack: Stack, browser: Browser, shop: str
) -> None:
    agent = await (await browser.new_context()).new_page()
    await sign_in(agent, f"{stack.api}/console", ADA)
    await expect(agent.locator("#connection")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS
    )

    customer_context = await browser.new_context()
    customer = await customer_context.new_page()
    problems = PageProblems(customer, expected=("ERR_INTERNET_DISCONNECTED",))
    await customer.goto(shop)
    await customer.click("[data-omniroute=launcher]", timeout=WAIT_MS)
    chat = customer.frame_locator("iframe[data-omniroute=chat]")
    await chat.locator("#chat-text").fill("Are you open on Sunday?")
    await chat.locator("#chat-send").click()
    state = chat.locator("#chat-state")
    await expect(state).to_have_attribute("data-state", "live", timeout=WAIT_MS)

    await agent.locator("#mine li.conversation-item button").click(timeout=WAIT_MS)
    await expect(agent.locator("#timeline li[data-direction=inbound]")).to_have_count(
        1, timeout=WAIT_MS
    )
    await customer_context.set_offline(True)
    await expect(state).to_have_attribute("data-state", "offline", timeout=WAIT_MS)
    await agent.fill("#composer-text", "Yes, from 10 to 16.")
    await agent.click("#send-reply")
    # The reply is stored once the console shows it; the customer is still cut off.
    await expect(agent.locator("#timeline li[data-direction=outbound]")).to_have_count(
        1, timeout=WAIT_MS
    )
    reply = chat.locator(".bubble[data-direction=outbound]", has_text="Yes, from 10 to 16.")
    assert await reply.count() == 0

    await customer_context.set_offline(False)
    await expect(state).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await expect(reply).to_have_count(1, timeout=WAIT_MS)
    assert problems.errors == [], problems.errors


async def test_a_site_not_on_the_workspace_list_cannot_frame_the_chat(
    stack: Stack, browser: Browser, shop: str
) -> None:
    async with site(stack, "Copycat") as copycat:
        customer = await (await browser.new_context()).new_page()
        async with customer.expect_console_message(
            lambda message: "frame-ancestors" in message.text, timeout=WAIT_MS
        ):
            await customer.goto(copycat)
            await customer.click("[data-omniroute=launcher]", timeout=WAIT_MS)
        # The browser refused to load the chat page in the frame (an error page instead).
        frames = [f.url for f in customer.frames if f is not customer.main_frame]
        assert len(frames) == 1
        assert "/widget/chat" not in frames[0]
        chat = customer.frame_locator("iframe[data-omniroute=chat]")
        assert await chat.locator("#chat-text").count() == 0
        # The same widget on the listed shop opens the chat.
        await customer.goto(shop)
        await customer.click("[data-omniroute=launcher]", timeout=WAIT_MS)
        await expect(chat.locator("#chat-text")).to_be_visible(timeout=WAIT_MS)
