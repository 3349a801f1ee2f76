"""Databases for service tests: the real PostgreSQL of the machine and a SQLite file.

Each test module gets a fresh PostgreSQL database (created on the server, dropped afterwards),
so tests can run side by side and nothing leaks between runs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service.db import make_engine, make_sessionmaker
from lrprobe.service.models import Base

POSTGRES_ADMIN = os.environ.get(
    "LRPROBE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    name = f"lrprobe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _url(kind: str, tmp_path: Path, postgres_url: str) -> str:
    return postgres_url if kind == "postgresql" else f"sqlite:///{tmp_path / 'test.sqlite'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(_url(request.param, tmp_path, postgres_url))
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        yield make_sessionmaker(engine)
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


# --- the HTTP API on both databases ----------------------------------------------------------


@pytest.fixture(scope="module")
def migrated_postgres(postgres_url: str) -> str:
    from lrprobe.service import migrate

    migrate.upgrade(postgres_url)
    return postgres_url


@pytest.fixture(scope="module")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lrprobe.service import migrate

    path = tmp_path_factory.mktemp("template") / "lrprobe.sqlite"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def api(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    migrated_postgres: str,
    migrated_sqlite_template: Path,
) -> Iterator[object]:
    """The app on a migrated database with two ordinary keys and an admin key; the queue is a
    recording fake (the real broker path is tested with the worker)."""
    import shutil

    from tests.service.api_support import start_api

    if request.param == "sqlite":
        shutil.copy(migrated_sqlite_template, tmp_path / "lrprobe.sqlite")
        url = f"sqlite:///{tmp_path / 'lrprobe.sqlite'}"
    else:
        url = migrated_postgres
    with start_api(url, tmp_path) as running:
        yield running
