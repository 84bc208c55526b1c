"""Run the Alembic migrations in ``sql/migrations`` against an engine."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect

MIGRATIONS_ENV = "LABELLOOP_MIGRATIONS_DIR"


def migrations_dir() -> Path:
    """``sql/migrations`` of a source checkout, else the copy a wheel installs as
    ``labelloop.db.migrations`` (see setup.py); ``LABELLOOP_MIGRATIONS_DIR`` overrides both."""
    override = os.environ.get(MIGRATIONS_ENV)
    if override:
        path = Path(override)
    else:
        path = Path(__file__).resolve().parents[2] / "sql" / "migrations"
        if not (path / "env.py").is_file():
            path = Path(__file__).resolve().parent / "migrations"
    if not (path / "env.py").is_file():
        raise FileNotFoundError(f"Alembic migrations not found at {path}; set {MIGRATIONS_ENV}")
    return path


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection_engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    if "alembic_version" not in inspect(engine).get_table_names():
        return None
    with engine.connect() as conn:
        from alembic.runtime.migration import MigrationContext

        return MigrationContext.configure(conn).get_current_revision()
