"""``lrprobe keys create|revoke|list``: manage API keys. With an admin key (``--api-key`` or
``$LRPROBE_API_KEY``) through the service's ``/v1/keys``; without one, directly in the
configured database (operators, e.g. to make the first admin key)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from lrprobe.cli.errors import fail
from lrprobe.cli.extras import require_extra
from lrprobe.cli.remote import ApiKey, Format, FormatOption, Url, connect, echo_json, print_table

if TYPE_CHECKING:
    from lrprobe.client.schemas import ApiKeyCreated, ApiKeyOut

keys_app = typer.Typer(
    help="Manage API keys: over the API with an admin key, else directly in the database."
)


def _require_service(command: str) -> None:
    require_extra("service", f"keys {command}", alternative="pass --api-key to use the service")


@contextmanager
def _sessions() -> Iterator[Any]:
    from lrprobe.cli.database import database_errors, load_settings, require_database
    from lrprobe.service import migrate
    from lrprobe.service.db import make_engine, make_sessionmaker

    settings = load_settings()
    require_database(settings)
    url = settings.resolved_database_url
    with database_errors(url):
        engine = make_engine(url)
        try:
            migrate.check_at_head(engine)
            yield make_sessionmaker(engine)
        finally:
            engine.dispose()


@keys_app.command("create")
def create(
    name: str = typer.Argument(..., help="Who or what uses the key."),
    admin: bool = typer.Option(False, "--admin", help="An admin key (manages keys)."),
    output: FormatOption = Format.table,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Create a key and print its secret (shown this once only)."""
    created: ApiKeyCreated
    if api_key:
        with connect(url, api_key) as lrp:
            created = lrp.create_key(name, admin=admin)
    else:
        _require_service("create")
        from lrprobe.client.schemas import ApiKeyCreate
        from lrprobe.service.keys import create_key

        with _sessions() as sessions:
            created = create_key(sessions, ApiKeyCreate(name=name, admin=admin))
    if output is Format.json:
        echo_json(created)
        return
    typer.echo(f"id: {created.id}")
    typer.echo(f"secret (shown once): {created.secret}")


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The id from `lrprobe keys list`."),
    output: FormatOption = Format.table,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Revoke a key; it stops working at once."""
    key: ApiKeyOut
    if api_key:
        with connect(url, api_key) as lrp:
            key = lrp.revoke_key(key_id)
    else:
        _require_service("revoke")
        from lrprobe.service.errors import KeyNotFoundError
        from lrprobe.service.keys import revoke_key

        with _sessions() as sessions:
            try:
                key = revoke_key(sessions, key_id)
            except KeyNotFoundError as exc:
                fail(exc.detail, code=exc.code)
    if output is Format.json:
        echo_json(key)
    else:
        typer.echo(f"revoked {key.id} ({key.name})")


@keys_app.command("list")
def list_(
    json_output: bool = typer.Option(False, "--json", help="Print JSON (as --format json)."),
    output: FormatOption = Format.table,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """List keys (secrets are never shown again)."""
    keys: list[ApiKeyOut]
    if api_key:
        with connect(url, api_key) as lrp:
            keys = lrp.list_keys()
    else:
        _require_service("list")
        from lrprobe.service.keys import list_keys

        with _sessions() as sessions:
            keys = list_keys(sessions)
    if json_output or output is Format.json:
        echo_json(keys)
        return
    from rich.markup import escape
    from rich.table import Table

    # Fits 80 columns beside the 32-character ids; a long name folds.
    table = Table(title=None, box=None, header_style="bold")
    table.add_column("id", no_wrap=True)
    table.add_column("name", overflow="fold", min_width=8)
    for column in ("state", "prefix", "created"):
        table.add_column(column, no_wrap=True)
    for k in keys:
        state = "revoked" if k.revoked_at else ("admin" if k.admin else "active")
        # A name is the user's text, never rich markup.
        table.add_row(k.id, escape(k.name), state, f"{k.prefix}…", f"{k.created_at:%Y-%m-%d}")
    print_table(table)
