"""room on conversation pages for the per-message update

Every inbound message rewrites its conversation's ``last_message_at`` and
``updated_at``. Neither is indexed, so PostgreSQL can keep the new row version on the
same page (a HOT update) and touch none of the table's eight indexes, but only if the
page has room. Packed full (the default fillfactor of 100), the new version went to
another page and every index got a new entry: with 10^6 stored conversations, 166 such
updates read 468 index pages, dirtied 725 pages and logged 284 of them whole (2.1 MB of
WAL); on the page they dirty about one page each and log 16 KB (bench B6). Pages now
keep a tenth free, room for a new version of a row (PostgreSQL prunes dead versions
from a page before it is that full), and the table grows by a ninth. Existing pages
get the room when they are rewritten (``VACUUM FULL``, ``CLUSTER``, ``pg_repack``).
SQLite has no such setting.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23 00:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONVERSATIONS_FILLFACTOR = 90


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE conversations SET (fillfactor = {CONVERSATIONS_FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE conversations RESET (fillfactor)")
