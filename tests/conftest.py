"""Migrated database templates, built once per test session (fixtures of tests/support)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import migrated, postgres_database


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated PostgreSQL database that tests copy and never connect to (a template with a
    connection open cannot be copied)."""
    with postgres_database() as url:
        yield migrated(url)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that tests copy."""
    path = tmp_path_factory.mktemp("template") / "lrprobe.sqlite"
    migrated(f"sqlite:///{path}")
    return path
