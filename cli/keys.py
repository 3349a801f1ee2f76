"""``lrprobe keys create|revoke|list``: manage API keys directly in the database (operators;
clients use ``/v1/keys`` with an admin key)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

keys_app = typer.Typer(help="Manage API keys (directly in the configured database).")


@contextmanager
def _sessions() -> Iterator[Any]:
    from service import migrate
    from service.db import make_engine, make_sessionmaker
    from service.settings import Settings

    engine = make_engine(Settings().resolved_database_url)
    try:
        migrate.check_at_head(engine)
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@keys_app.command("create")
def create(
    name: str = typer.Argument(..., help="Who or what uses the key."),
    admin: bool = typer.Option(False, "--admin", help="An admin key (manages keys)."),
) -> None:
    """Create a key and print its secret (shown this once only)."""
    from client.schemas import ApiKeyCreate
    from service.keys import create_key

    with _sessions() as sessions:
        created = create_key(sessions, ApiKeyCreate(name=name, admin=admin))
    typer.echo(f"id: {created.id}")
    typer.echo(f"secret (shown once): {created.secret}")


@keys_app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="The id from `lrprobe keys list`.")) -> None:
    """Revoke a key; it stops working at once."""
    from service.errors import KeyNotFoundError
    from service.keys import revoke_key

    with _sessions() as sessions:
        try:
            key = revoke_key(sessions, key_id)
        except KeyNotFoundError as exc:
            typer.echo(exc.detail, err=True)
            raise typer.Exit(1) from None
    typer.echo(f"revoked {key.id} ({key.name})")


@keys_app.command("list")
def list_(
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List keys (secrets are never shown again)."""
    import json

    from service.keys import list_keys

    with _sessions() as sessions:
        keys = list_keys(sessions)
    if json_output:
        typer.echo(json.dumps([k.model_dump(mode="json") for k in keys], indent=2))
        return
    for k in keys:
        state = "revoked" if k.revoked_at else ("admin" if k.admin else "active")
        typer.echo(f"{k.id}  {k.prefix}…  {state:8}  {k.created_at:%Y-%m-%d %H:%M}  {k.name}")
