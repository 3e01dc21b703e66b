"""State and dependencies of the ingest app."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from services.ingest.accounts import AccountDirectory
from services.ingest.replay import ReplayGuard
from services.ingest.webchat_hub import WebChatHub
from services.ingest.webchat_origins import WebChatOrigins
from shared.bus.port import Bus
from shared.channels.attachments import AttachmentStore
from shared.channels.protocol import ChannelLimits
from shared.channels.registry import ChannelRegistry
from shared.db.session import Database
from shared.rate_limit import TokenBuckets
from shared.settings import Settings


@dataclass
class IngestState:
    settings: Settings
    bus: Bus
    database: Database
    webchat: WebChatHub
    registry: ChannelRegistry
    accounts: AccountDirectory
    attachments: AttachmentStore
    replay_guard: ReplayGuard
    limits: ChannelLimits
    webchat_origins: WebChatOrigins
    webchat_buckets: TokenBuckets
    workspace_ids: dict[str, uuid.UUID] = field(default_factory=dict)


def ingest_state(connection: HTTPConnection) -> IngestState:
    state: IngestState = connection.app.state.ingest
    return state


async def _request_state(request: Request) -> IngestState:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, which cost a
    # thread hand-off on every request for a dictionary lookup.
    return ingest_state(request)


StateDep = Annotated[IngestState, Depends(_request_state)]
