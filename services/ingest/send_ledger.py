"""The send ledger: outbound messages already handed to their provider, kept in the
database so that a restarted ingest process (or the replica a partition moved to) does
not send them to the customer a second time.

Consumer offsets are committed after a batch, at most every half second, so a process
that dies, or loses its partitions, leaves the records since the last commit to be read
again. The provider dispatcher asks the ledger about a whole batch in one query before
sending and writes a row right after the provider accepted a message.

What remains: a process that dies after the provider accepted a message and before its
row is written (one INSERT, a few milliseconds) sends it again when the record is read
again. None of the providers used here (Twilio Messages, Meta's Send API and WhatsApp
``messages``, an SMTP relay) takes an idempotency key that would close that window on
their side.

Both statements run in autocommit (no BEGIN/COMMIT round trips), and a row written
concurrently by another replica is skipped by ``ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Uuid, any_, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from shared.db.models import SentReply
from shared.db.session import Database
from shared.events import OutboundMessageRequested

PRUNE_EVERY = 500  # rows written between two deletions of expired rows
DEFAULT_RETENTION = timedelta(days=7)  # omni.outbound.v1's retention.ms


@dataclass(frozen=True)
class LedgerEntry:
    """A message the ledger says was handed to its provider."""

    workspace_id: uuid.UUID
    adapter: str
    provider_message_id: str
    sent_at: datetime


class SendLedger:
    def __init__(self, database: Database, *, retention: timedelta = DEFAULT_RETENTION) -> None:
        """Rows older than ``retention`` are deleted every ``PRUNE_EVERY`` rows written:
        keep it at least as long as ``omni.outbound.v1`` keeps its records, so a reset
        or replayed consumer group still finds what it sent."""
        self._database = database
        self._retention = retention
        self._written = 0
        columns = (
            SentReply.message_id,
            SentReply.workspace_id,
            SentReply.adapter,
            SentReply.provider_message_id,
            SentReply.sent_at,
        )
        # Built once. On PostgreSQL one array parameter, so batches of every size share
        # one prepared statement (an IN list would be a statement per size).
        ids_match = (
            SentReply.message_id.in_(bindparam("ids", expanding=True))
            if database.is_sqlite
            else SentReply.message_id == any_(bindparam("ids", type_=postgresql.ARRAY(Uuid())))
        )
        self._lookup = select(*columns).where(ids_match)
        insert = sqlite.insert if database.is_sqlite else postgresql.insert
        self._record = (
            insert(SentReply)
            .values(
                message_id=bindparam("message_id"),
                workspace_id=bindparam("workspace_id"),
                channel=bindparam("channel"),
                adapter=bindparam("adapter"),
                provider_message_id=bindparam("provider_message_id"),
                sent_at=bindparam("sent_at"),
            )
            .on_conflict_do_nothing(index_elements=["message_id"])
        )

    async def sent(
        self, messages: Collection[OutboundMessageRequested]
    ) -> dict[uuid.UUID, LedgerEntry]:
        """Those of ``messages`` already handed to their provider, by message id (one
        query for the lot; a row counts only for the workspace that wrote it)."""
        if not messages:
            return {}
        workspace_of = {message.message_id: message.workspace_id for message in messages}
        async with self._database.autocommit() as connection:
            rows = await connection.execute(self._lookup, {"ids": list(workspace_of)})
        return {
            row.message_id: LedgerEntry(
                workspace_id=row.workspace_id,
                adapter=row.adapter,
                provider_message_id=row.provider_message_id,
                sent_at=row.sent_at if row.sent_at.tzinfo else row.sent_at.replace(tzinfo=UTC),
            )
            for row in rows
            if workspace_of.get(row.message_id) == row.workspace_id
        }

    async def record(
        self,
        message: OutboundMessageRequested,
        *,
        adapter: str,
        provider_message_id: str,
        now: datetime,
    ) -> None:
        """Note ``message`` as handed to its provider (call right after it accepted)."""
        async with self._database.autocommit() as connection:
            await connection.execute(
                self._record,
                {
                    "message_id": message.message_id,
                    "workspace_id": message.workspace_id,
                    "channel": message.channel.value,
                    "adapter": adapter,
                    "provider_message_id": provider_message_id,
                    "sent_at": now,
                },
            )
            self._written += 1
            if self._written % PRUNE_EVERY == 0:
                await connection.execute(
                    delete(SentReply).where(SentReply.sent_at < now - self._retention)
                )
