"""Apply the Alembic migrations: ``python -m shared.db.migrate [revision]`` (default head)."""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.db.session import make_sqlite_directory
from shared.settings import get_settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url)
    return config


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    """Blocking; runs its own event loop, so call it from sync code or a worker thread.
    A SQLite database's directory is created first (a fresh checkout has none)."""
    config = alembic_config(database_url)
    make_sqlite_directory(database_url or get_settings().database_url)
    command.upgrade(config, revision)


def main() -> None:
    upgrade(revision=sys.argv[1] if len(sys.argv) > 1 else "head")


if __name__ == "__main__":
    main()
