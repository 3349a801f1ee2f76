"""Test databases, their schema always built by the migrations (``alembic upgrade head``), as in
production: the models' ``create_all`` would hide a migration that drifted from them.

PostgreSQL databases are created on the machine's server (``LRPROBE_TEST_POSTGRES``) and dropped
afterwards, so that test runs can go side by side; a copy of a migrated template
(``CREATE DATABASE … TEMPLATE``) gives each test an empty schema of its own without migrating
again. SQLite databases are files, copied from a migrated template the same way.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service import migrate
from lrprobe.service.db import make_engine, make_sessionmaker

POSTGRES_ADMIN = os.environ.get(
    "LRPROBE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS = os.environ.get("LRPROBE_TEST_REDIS", "redis://127.0.0.1:6379")


def _name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def create_postgres_database(admin: str = POSTGRES_ADMIN, template: str | None = None) -> str:
    """A new, empty database on the server of ``admin`` (a libpq URL), or a copy of
    ``template`` (the URL of a database on that server no one is connected to); returns its
    SQLAlchemy URL."""
    name = f"lrprobe_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{_name(template)}"' if template is not None else ""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    server = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{server}/{name}"


def drop_postgres_database(url: str, admin: str = POSTGRES_ADMIN) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_name(url)}" WITH (FORCE)')


@contextmanager
def postgres_database(admin: str = POSTGRES_ADMIN, template: str | None = None) -> Iterator[str]:
    """:func:`create_postgres_database`, dropped on exit."""
    url = create_postgres_database(admin, template)
    try:
        yield url
    finally:
        drop_postgres_database(url, admin)


def migrated(url: str) -> str:
    """``url``, its schema brought to the latest migration."""
    migrate.upgrade(url)
    return url


def sqlite_copy(template: Path, path: Path) -> str:
    """A SQLite database at ``path``, copied from the migrated file ``template``."""
    shutil.copy(template, path)
    return f"sqlite:///{path}"


@contextmanager
def sessions_for(url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on ``url``, migrated first (idempotent where it is at head already)."""
    engine = make_engine(migrated(url))
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()
