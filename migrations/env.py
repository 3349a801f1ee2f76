"""Alembic environment: the URL comes from ``config.attributes["url"]`` (set by
``lrprobe.service.migrate``), else from ``alembic.ini``'s ``sqlalchemy.url``, else from Settings."""

from __future__ import annotations

from alembic import context

from lrprobe.service.db import make_engine
from lrprobe.service.models import Base, UTCDateTime
from lrprobe.service.settings import Settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    return str(url) if url else Settings().resolved_database_url


def _render_item(kind: str, obj: object, _context: object) -> str | bool:
    # Migrations stay frozen: the zone-restoring wrapper is a plain DateTime column in the DB.
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def _options(url: str) -> dict[str, object]:
    # SQLite cannot ALTER most things in place: batch mode copies the table instead.
    return {
        "target_metadata": target_metadata,
        "render_as_batch": url.startswith("sqlite"),
        "compare_type": True,
        "render_item": _render_item,
    }


def run_offline() -> None:
    url = _url()
    context.configure(url=url, literal_binds=True, **_options(url))  # type: ignore[arg-type]
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            **_options(connection.engine.url.render_as_string()),  # type: ignore[arg-type]
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    url = _url()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context.configure(connection=conn, **_options(url))  # type: ignore[arg-type]
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
