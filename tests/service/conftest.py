"""Databases for service tests: the real PostgreSQL of the machine and a SQLite file, their
schemas built by the migrations (tests/support/databases.py).

Each test module gets a PostgreSQL database of its own for the API tests (created on the
server, dropped afterwards), so tests can run side by side and nothing leaks between runs; a
test on ``sessions`` gets an empty copy of the migrated template.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.support.databases import migrated, postgres_database, sessions_for, sqlite_copy


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[sessionmaker[Session]]:
    """An empty, migrated database of this test's own."""
    if request.param == "sqlite":
        with sessions_for(sqlite_copy(sqlite_template, tmp_path / "test.sqlite")) as made:
            yield made
        return
    template = request.getfixturevalue("postgres_template")
    with postgres_database(template=template) as url, sessions_for(url) as made:
        yield made


# --- the HTTP API on both databases ----------------------------------------------------------


@pytest.fixture(scope="module")
def migrated_postgres(postgres_url: str) -> str:
    return migrated(postgres_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[object]:
    """The app on a migrated database with two ordinary keys and an admin key; the queue is a
    recording fake (the real broker path is tested with the worker)."""
    from tests.service.api_support import start_api

    if request.param == "sqlite":
        url = sqlite_copy(sqlite_template, tmp_path / "lrprobe.sqlite")
    else:
        url = request.getfixturevalue("migrated_postgres")
    with start_api(url, tmp_path) as running:
        yield running
