"""The supervisor wall in a real browser: its figures follow the queue live."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.async_api import Browser, expect
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect

from devmode.seed import DEMO_WORKSPACE_SLUG
from shared.csat import CsatSettings
from shared.db.models import CsatSettingsRow, Workspace
from tests.browser.conftest import Stack
from tests.browser.support import WAIT_MS, CustomerChat, PageProblems, needs_chromium, sign_in
from tests.e2e.chat_flow import next_frame

pytestmark = [pytest.mark.browser, needs_chromium]

ADA = "ada@demo.omniroute.dev"
SAM = "sam@demo.omniroute.dev"
SURVEY_LINK = re.compile(r"(https?://\S+/v1/surveys/[\w-]+\.[\w-]+)")


async def enable_surveys(stack: Stack) -> None:
    """CSAT on for the demo workspace, links to this stack's agent_api."""
    document = CsatSettings(enabled=True, link_base_url=stack.api).model_dump(mode="json")
    async with stack.database.sessions() as session:
        workspace_id = await session.scalar(
            select(Workspace.id).where(Workspace.slug == DEMO_WORKSPACE_SLUG)
        )
        assert workspace_id is not None
        session.add(CsatSettingsRow(workspace_id=workspace_id, document=document))
        await session.commit()


@dataclass(frozen=True)
class AgentSocket:
    socket: ClientConnection
    auth: dict[str, str]


@contextlib.asynccontextmanager
async def agent_socket(stack: Stack, email: str) -> AsyncIterator[AgentSocket]:
    """An agent's live socket (to learn of assignments), authenticated and ready."""
    token = await stack.token(email)
    url = stack.api.replace("http://", "ws://") + "/v1/ws"
    async with connect(url, subprotocols=["bearer", token]) as socket:  # type: ignore[list-item]
        await next_frame(socket, frame_type="ready")
        yield AgentSocket(socket, {"authorization": f"Bearer {token}"})


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
    problems = PageProblems(page)
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


async def rate_a_chat(
    stack: Stack, browser: Browser, ada: AgentSocket, name: str, score: int
) -> None:
    """A customer chats, Ada resolves, and the customer rates through the survey link
    (the rating page in the browser, its button posting the score)."""
    customer = await CustomerChat.open(stack.ingest, name)
    await customer.say(f"Hello, this is {name}.")
    conversation_id = (await next_frame(ada.socket, frame_type="conversation.assigned"))["data"][
        "conversation_id"
    ]
    async with httpx.AsyncClient(base_url=stack.api, headers=ada.auth) as client:
        path = f"/v1/conversations/{conversation_id}"
        resolved = await client.post(f"{path}/resolve", json={})
        assert resolved.status_code == 200, resolved.text
        messages = (await client.get(f"{path}/messages")).json()
    links = [link for m in messages for link in SURVEY_LINK.findall(m["text"] or "")]
    assert len(links) == 1, messages
    survey = await browser.new_page()
    try:
        await survey.goto(links[0])
        await survey.locator(f"button[name=score][value='{score}']").click()
        await expect(survey.locator("h1")).to_have_text("Thank you!", timeout=WAIT_MS)
    finally:
        await survey.close()


async def test_the_wall_draws_the_csat_of_real_ratings(stack: Stack, browser: Browser) -> None:
    await enable_surveys(stack)
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    problems = PageProblems(page)
    await sign_in(page, f"{stack.api}/console/wall", SAM)
    await expect(page.locator("#csat-empty")).to_have_text("No CSAT data yet.", timeout=WAIT_MS)
    follow_ups = page.locator("#csat-follow-ups")
    await expect(follow_ups.locator(".value")).to_have_text("0")
    await expect(page.locator("#csat-follow-up-oldest .value")).to_have_text("\u2013")

    scores = [5, 3, 5, 4]
    async with agent_socket(stack, ADA) as ada:
        for n, score in enumerate(scores):
            await rate_a_chat(stack, browser, ada, f"Customer {n}", score)

    # The wall re-reads GET /v1/analytics/csat when the live socket pushes news.
    average = f"{sum(scores) / len(scores):.2f}"  # 4.25
    await expect(page.locator("#csat-average .value")).to_have_text(average, timeout=WAIT_MS)
    await expect(page.locator("#csat-average")).to_have_attribute("data-level", "good")
    await expect(page.locator("#csat-count .value")).to_have_text(str(len(scores)))
    await expect(page.locator("#csat-response-rate .value")).to_have_text("100%")
    await expect(page.locator("#csat-response-rate .label")).to_have_text(
        f"answered of {len(scores)} surveys"
    )
    bars = page.locator("#csat svg rect")
    await expect(bars).to_have_count(5)
    heights = [float(await bars.nth(i).get_attribute("height") or "0") for i in range(5)]
    assert heights[0] == heights[1] == 0  # nobody gave 1 or 2
    assert heights[2] == heights[3] > 0  # one 3, one 4
    assert heights[4] == pytest.approx(2 * heights[3])  # two 5s
    await expect(follow_ups.locator(".value")).to_have_text("0")

    # A low score opens a follow-up: the wall shows it, and its close, live.
    async with agent_socket(stack, ADA) as ada:
        await rate_a_chat(stack, browser, ada, "Unhappy customer", 1)
    await expect(follow_ups.locator(".value")).to_have_text("1", timeout=WAIT_MS)
    await expect(follow_ups).to_have_attribute("data-level", "bad")
    await expect(page.locator("#csat-follow-up-oldest .value")).to_have_text(re.compile(r"^\d+"))
    await expect(page.locator("#csat-average .value")).to_have_text("3.60")
    async with httpx.AsyncClient(base_url=stack.api) as client:
        sam = {"authorization": f"Bearer {await stack.token(SAM)}"}
        listed = await client.get("/v1/csat/follow-ups", params={"status": "open"}, headers=sam)
        [opened] = listed.json()["items"]
        closed = await client.post(
            f"/v1/csat/follow-ups/{opened['id']}/close", json={"note": "Called back."}, headers=sam
        )
        assert closed.status_code == 200, closed.text
    await expect(follow_ups.locator(".value")).to_have_text("0", timeout=WAIT_MS)
    await expect(follow_ups).to_have_attribute("data-level", "good")
    await expect(page.locator("#csat-follow-up-oldest .value")).to_have_text("\u2013")
    assert problems.errors == [], problems.errors
