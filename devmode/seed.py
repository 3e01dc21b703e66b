"""Demo data: a workspace with agents, so a fresh system is alive at once.

``python -m devmode.seed`` seeds the database of OMNI_DATABASE_URL (idempotent).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_api.auth import hash_password
from shared.csat import CsatSettings
from shared.db.models import (
    Agent,
    AgentRole,
    AgentStatus,
    AgentTeam,
    CannedResponse,
    ChannelAccount,
    CsatSettingsRow,
    OutcomeCode,
    Team,
    Workspace,
)
from shared.db.session import Database
from shared.settings import get_settings

DEMO_WORKSPACE_SLUG: Final = "demo"
DEMO_PASSWORD: Final = "omniroute-demo"  # noqa: S105 - published demo credential
DEMO_TEAMS: Final = ("billing",)


@dataclass(frozen=True)
class DemoAgent:
    email: str
    display_name: str
    role: AgentRole
    tier: int
    status: AgentStatus
    skills: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()


DEMO_AGENTS: Final[tuple[DemoAgent, ...]] = (
    DemoAgent("ada@demo.omniroute.dev", "Ada (tier 1)", AgentRole.AGENT, 1, AgentStatus.ONLINE),
    DemoAgent("ben@demo.omniroute.dev", "Ben (tier 1)", AgentRole.AGENT, 1, AgentStatus.OFFLINE),
    DemoAgent(
        "cy@demo.omniroute.dev",
        "Cy (tier 2)",
        AgentRole.AGENT,
        2,
        AgentStatus.OFFLINE,
        skills=("billing",),
        teams=("billing",),
    ),
    DemoAgent(
        "sam@demo.omniroute.dev", "Sam (supervisor)", AgentRole.SUPERVISOR, 3, AgentStatus.OFFLINE
    ),
)


def demo_support_address(slug: str = DEMO_WORKSPACE_SLUG) -> str:
    """The workspace's email address: ``support@demo.omniroute.dev`` for the demo."""
    return f"support@{slug}.omniroute.dev"


async def seed_demo(database: Database, *, slug: str = DEMO_WORKSPACE_SLUG) -> uuid.UUID:
    """Create the demo workspace and agents unless they exist; return the workspace id."""
    async with database.sessions() as session:
        workspace = await session.scalar(select(Workspace).where(Workspace.slug == slug))
        if workspace is None:
            workspace = Workspace(id=uuid.uuid4(), slug=slug, name="Demo Inc.")
            session.add(workspace)
            await session.flush()
        existing = set(
            await session.scalars(select(Agent.email).where(Agent.workspace_id == workspace.id))
        )
        teams = {
            team.name: team
            for team in await session.scalars(select(Team).where(Team.workspace_id == workspace.id))
        }
        for name in DEMO_TEAMS:
            if name not in teams:
                teams[name] = Team(id=uuid.uuid4(), workspace_id=workspace.id, name=name)
                session.add(teams[name])
        password_hash = hash_password(DEMO_PASSWORD)
        for demo in DEMO_AGENTS:
            if demo.email in existing:
                continue
            agent = Agent(
                id=uuid.uuid4(),
                workspace_id=workspace.id,
                email=demo.email,
                display_name=demo.display_name,
                password_hash=password_hash,
                role=demo.role.value,
                tier=demo.tier,
                status=demo.status.value,
                capacity_units=3.0,
                skills=list(demo.skills),
                languages=["en"],
            )
            session.add(agent)
            await session.flush()
            for team_name in demo.teams:
                session.add(
                    AgentTeam(
                        agent_id=agent.id, team_id=teams[team_name].id, workspace_id=workspace.id
                    )
                )
        await seed_desk_content(session, workspace.id)
        address = demo_support_address(slug)
        has_account = await session.scalar(
            select(ChannelAccount.id).where(
                ChannelAccount.channel == "email", ChannelAccount.address == address
            )
        )
        if has_account is None:
            # Mail to it arrives at ingest's SMTP listener (port 2525 in dev mode).
            session.add(
                ChannelAccount(
                    id=uuid.uuid4(),
                    workspace_id=workspace.id,
                    channel="email",
                    adapter="email",
                    address=address,
                    display_name=f"{workspace.name} Support",
                )
            )
        await session.commit()
        return workspace.id


DEMO_OUTCOME_CODES: Final = (
    ("answered", "Question answered"),
    ("fixed", "Problem fixed"),
    ("refunded", "Refund issued"),
    ("no_reply", "Customer stopped replying"),
    ("duplicate", "Duplicate of another conversation"),
)
DEMO_CANNED_RESPONSES: Final = (
    ("greeting", "Greeting", "Hi, thanks for reaching out! How can I help you today?"),
    ("refund-timeline", "Refund timeline", "Refunds reach your account within 5 business days."),
    ("closing", "Closing", "Glad I could help. Is there anything else I can do for you?"),
)


async def seed_desk_content(session: AsyncSession, workspace_id: uuid.UUID) -> None:
    """Outcome codes and canned responses of the demo desk, each unless present."""
    codes = set(
        await session.scalars(
            select(OutcomeCode.code).where(OutcomeCode.workspace_id == workspace_id)
        )
    )
    for code, label in DEMO_OUTCOME_CODES:
        if code not in codes:
            session.add(
                OutcomeCode(id=uuid.uuid4(), workspace_id=workspace_id, code=code, label=label)
            )
    shortcuts = set(
        await session.scalars(
            select(CannedResponse.shortcut).where(CannedResponse.workspace_id == workspace_id)
        )
    )
    for shortcut, title, body in DEMO_CANNED_RESPONSES:
        if shortcut not in shortcuts:
            session.add(
                CannedResponse(
                    id=uuid.uuid4(),
                    workspace_id=workspace_id,
                    shortcut=shortcut,
                    title=title,
                    body=body,
                )
            )


async def enable_demo_surveys(database: Database, workspace_id: uuid.UUID) -> None:
    """Dev mode asks for CSAT on resolve (all channels, reply and link), unless the
    workspace has CSAT settings already (a change made in the demo is kept). The link
    goes to agent_api's public URL, which dev mode sets to the URL it prints."""
    async with database.sessions() as session:
        if await session.get(CsatSettingsRow, workspace_id) is None:
            session.add(
                CsatSettingsRow(
                    workspace_id=workspace_id,
                    document=CsatSettings(enabled=True).model_dump(mode="json"),
                )
            )
            await session.commit()


async def _main() -> None:
    database = Database(get_settings().database_url)
    try:
        workspace_id = await seed_demo(database)
    finally:
        await database.dispose()
    print(f"demo workspace {DEMO_WORKSPACE_SLUG!r} ({workspace_id}) seeded")  # noqa: T201


if __name__ == "__main__":
    asyncio.run(_main())
