"""The one settings factory of the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrprobe.service.settings import Settings


def make_settings(data_dir: Path, database_url: str | None = None, **overrides: Any) -> Settings:
    """Settings on ``data_dir``, read from nowhere else (no ``.env``, no ``LRPROBE_*`` of the
    machine running the tests). Rate limits are generous, so that a test meets only the limits it
    sets; ``file://`` data may come from ``data_dir/data`` and remote data from
    ``data.example.com``."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "data_roots": [data_dir / "data"],
        "allowed_data_hosts": ["data.example.com"],
        "rate_limit_per_minute": 10_000,
        "sign_in_failures_per_minute": 10_000,
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]
