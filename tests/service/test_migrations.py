"""One migration set for both databases: it upgrades, downgrades and matches the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from lrprobe.service import migrate
from lrprobe.service.db import make_engine
from lrprobe.service.models import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> str:
    return f"sqlite:///{tmp_path / 'm.sqlite'}" if request.param == "sqlite" else postgres_url


def test_upgrade_downgrade_upgrade_and_models_match_migrations(url: str) -> None:
    engine = make_engine(url)
    try:
        migrate.upgrade(url)
        assert migrate.current_revisions(engine) == migrate.head_revisions()
        assert migrate.schema_differences(engine) == []  # what `alembic check` checks
        migrate.downgrade(url, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(url)
        tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
        assert tables == set(Base.metadata.tables)
        assert migrate.schema_differences(engine) == []
        migrate.check_at_head(engine)
    finally:
        migrate.downgrade(url, "base")
        engine.dispose()
