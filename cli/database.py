"""The configured database as the operator commands use it directly (``serve``, ``migrate``, and
``keys`` without ``--api-key``): settings, the first-start check and database errors, each as one
line with a code instead of a pydantic or SQLAlchemy traceback. Needs the service extra."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lrprobe.cli.errors import fail

if TYPE_CHECKING:
    from lrprobe.service.settings import Settings


def load_settings() -> Settings:
    """``LRPROBE_*`` settings; a bad value ends the command naming the variable."""
    from pydantic import ValidationError

    from lrprobe.service.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "LRPROBE_" + "_".join(str(part) for part in first["loc"]).upper()
        fail(f"{name}: {first['msg']}; fix or unset it", code="invalid_settings")


def make_data_dir(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"Cannot create the data folder {settings.data_dir} ({exc.strerror}); set "
             "LRPROBE_DATA_DIR to a folder you can write", code="data_dir_unusable")  # fmt: skip


def require_database(settings: Settings) -> None:
    """The default SQLite file must exist already: opening it would create an empty database
    that only leads to a confusing schema error."""
    if settings.database_url is not None:
        return
    path = settings.data_dir / "lrprobe.sqlite"
    if not path.is_file():
        fail(f"There is no lrprobe database at {path} yet; start the service once with "
             "`lrprobe serve` (or run `lrprobe migrate`), or pass --api-key to use the API",
             code="database_not_initialized")  # fmt: skip


def display_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """End the command with one line for errors of the database at ``url``."""
    from sqlalchemy.exc import SQLAlchemyError

    from lrprobe.service.migrate import SchemaNotAtHeadError

    try:
        yield
    except SchemaNotAtHeadError as exc:
        fail(str(exc), code="schema_not_at_head")
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        fail(f"Cannot use the database at {display_url(url)} ({reason}); check "
             "LRPROBE_DATABASE_URL and that the database server is up",
             code="database_unavailable")  # fmt: skip
