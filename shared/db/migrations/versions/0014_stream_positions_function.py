"""stream positions in one round trip: lock, latest position and numbering together

A transaction that wrote outbox rows gives them their stream positions at its end,
under the sequencer's advisory lock held until it commits (so when position N is
visible, every position below it is). That took two statements, the lock and then
the numbering, because one statement's snapshot is taken before it could wait for the
lock and would miss positions handed out by the transaction it waited for. In a
VOLATILE PL/pgSQL function under READ COMMITTED (the isolation every writer here uses)
every statement takes a fresh snapshot: the numbering runs after the lock was granted
and sees every position handed out before, in one round trip. Rows that have a position
keep it (only rows without one are numbered). The lock is the same advisory lock (key
``0x6F6D6E69``, ``shared.outbox``), so writers of the previous release, which take it
with a statement of their own, still exclude and see these and the other way round
during a rolling upgrade. SQLite (the dev mode) has no functions; there the outbox
keeps its in-process lock.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23 06:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # 1869442665 = 0x6F6D6E69, shared.outbox._SEQUENCER_LOCK_KEY.
    op.execute(
        """
        CREATE FUNCTION omni_take_stream_positions(row_ids bigint[])
        RETURNS TABLE (outbox_id bigint, stream_position bigint)
        LANGUAGE plpgsql VOLATILE
        AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock(1869442665);
            RETURN QUERY
                UPDATE outbox_events AS row_to_number
                SET seq = latest.top + numbered.ordinal
                FROM (SELECT coalesce(max(stream.seq), 0) AS top FROM outbox_events AS stream)
                        AS latest,
                     unnest(row_ids) WITH ORDINALITY AS numbered(wanted_id, ordinal)
                WHERE row_to_number.id = numbered.wanted_id AND row_to_number.seq IS NULL
                RETURNING row_to_number.id, row_to_number.seq;
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION omni_take_stream_positions(bigint[])")
