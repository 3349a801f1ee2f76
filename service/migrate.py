"""Schema migrations, run programmatically (``lrprobe migrate``, embedded start, tests).

The API refuses to start when the database is not at the latest migration, and ``/readyz``
reports it; embedded mode migrates at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from lrprobe.service.models import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class SchemaNotAtHeadError(RuntimeError):
    pass


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.attributes["url"] = url  # not a main option: URLs may hold '%' (configparser)
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head_revisions() -> frozenset[str]:
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(engine: Engine) -> frozenset[str]:
    with engine.connect() as conn:
        return frozenset(MigrationContext.configure(conn).get_current_heads())


def check_at_head(engine: Engine, heads: frozenset[str] | None = None) -> None:
    heads = head_revisions() if heads is None else heads
    current = current_revisions(engine)
    if current != heads:
        raise SchemaNotAtHeadError(
            f"The database schema is at {sorted(current) or 'no revision'}, not at the latest "
            f"migration {sorted(heads)}; run `lrprobe migrate` first."
        )


def schema_differences(engine: Engine) -> list[Any]:
    """What ``alembic check`` reports: differences between the tables and the models."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={"compare_type": True, "render_as_batch": engine.dialect.name == "sqlite"},
        )
        return list(compare_metadata(context, Base.metadata))
