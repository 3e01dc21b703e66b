"""Each workspace's web-chat origin policy as ingest sees it: read from the database,
cached briefly (an admin's change is in force within the cache time)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from shared.db.session import Database
from shared.webchat_origins import OriginPolicy, load_allowed_origins


class WebChatOrigins:
    def __init__(
        self,
        database: Database,
        *,
        any_when_unlisted: bool,
        ttl_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._any_when_unlisted = any_when_unlisted
        self._ttl = ttl_seconds
        self._clock = clock
        self._cached: dict[uuid.UUID, tuple[float, OriginPolicy]] = {}

    async def policy(self, workspace_id: uuid.UUID) -> OriginPolicy:
        entry = self._cached.get(workspace_id)
        now = self._clock()
        if entry is not None and now - entry[0] < self._ttl:
            return entry[1]
        async with self._database.sessions() as session:
            allowed = await load_allowed_origins(session, workspace_id)
        policy = OriginPolicy(tuple(allowed), any_when_unlisted=self._any_when_unlisted)
        self._cached[workspace_id] = (now, policy)
        return policy
