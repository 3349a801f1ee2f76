"""Which optional extra each command needs. The base install (SDK + this command) has no torch
and no server stack, so a command that needs either says in one line what to install instead of
failing with ``ModuleNotFoundError``."""

from __future__ import annotations

from importlib.util import find_spec
from typing import Literal

from lrprobe.cli.errors import fail

Extra = Literal["worker", "service"]

# The top-level modules each extra brings, as pyproject.toml's [project.optional-dependencies].
EXTRA_MODULES: dict[Extra, tuple[str, ...]] = {
    "worker": ("torch", "numpy", "safetensors", "sklearn", "fsspec"),
    "service": ("fastapi", "uvicorn", "sqlalchemy", "alembic", "celery", "pydantic_settings"),
}


def missing_modules(extra: Extra) -> list[str]:
    # find_spec locates a module without importing it, so checking torch costs nothing.
    return [name for name in EXTRA_MODULES[extra] if find_spec(name) is None]


def has_extra(extra: Extra) -> bool:
    return not missing_modules(extra)


def require_extra(extra: Extra, command: str, *, alternative: str = "") -> None:
    """End ``lrprobe command`` with one line naming the extra to install (and ``alternative``,
    another way to get the job done) when a module of ``extra`` is missing."""
    missing = missing_modules(extra)
    if missing:
        instead = f", or {alternative}" if alternative else ""
        fail(
            f"`lrprobe {command}` needs the {extra} extra ({', '.join(missing)} not installed): "
            f"pip install 'lrprobe[{extra}]'{instead}",
            code="missing_extra",
        )
