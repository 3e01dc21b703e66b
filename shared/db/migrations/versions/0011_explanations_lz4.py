"""routing explanations compressed with lz4 on PostgreSQL

Every assignment records its candidates (an entry per online agent: tens of KB with a
few hundred agents), and so does every queued conversation. PostgreSQL compresses
values that large with pglz by default; lz4 does it several times faster, on the
routers' hot path. Nothing changes for readers. PostgreSQL before 14, or built without
lz4, keeps the default; SQLite has no such setting.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22 22:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("assignments", "explanation"), ("conversations", "routing_explanation"))


def _set_compression(method: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    statements = " ".join(
        f"EXECUTE 'ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method}';"
        for table, column in COLUMNS
    )
    op.execute(
        f"""
        DO $$
        BEGIN
            IF current_setting('server_version_num')::int >= 140000 THEN
                {statements}
            END IF;
        EXCEPTION WHEN feature_not_supported THEN
            RAISE NOTICE 'compression method {method} not available: columns unchanged';
        END $$;
        """
    )


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("default")
