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

from service.db import make_engine, make_sessionmaker
from service.models import Base

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
