"""``lrprobe serve`` (embedded mode: API + worker + reaper, SQLite and a data dir, no external
servers) and ``lrprobe migrate`` (production: the one-shot schema upgrade)."""

from __future__ import annotations

import signal
import socket
import sys
from types import FrameType

import typer

from lrprobe.cli.errors import fail
from lrprobe.cli.extras import has_extra, missing_modules, require_extra

# On SIGTERM or Ctrl-C, how long uvicorn waits for open responses before cancelling them: an
# event stream lasts as long as its job, and stopping must not wait for that (Docker sends
# SIGKILL 10 s after SIGTERM, which would skip the lifespan's cleanup).
SHUTDOWN_GRACE_SECONDS = 5  # seconds (uvicorn takes an int)


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(0)


def _require_free_port(host: str, port: int) -> None:
    """Fail before migrating and starting workers if uvicorn could not listen anyway."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            fail(f"Cannot listen on {host}:{port} ({exc.strerror}); stop what uses it or pass "
                 "--port", code="address_unavailable")  # fmt: skip


def _ensure_admin(settings: object, *, announce: bool) -> None:
    from lrprobe.service.db import make_engine, make_sessionmaker
    from lrprobe.service.keys import ensure_admin_key
    from lrprobe.service.settings import Settings

    assert isinstance(settings, Settings)
    engine = make_engine(settings.resolved_database_url)
    try:
        secret = ensure_admin_key(make_sessionmaker(engine), settings.bootstrap_admin_key)
    finally:
        engine.dispose()
    if secret is not None and announce and settings.bootstrap_admin_key is None:
        typer.echo(f"Admin API key (shown once, keep it): {secret}")
    elif secret is not None:
        typer.echo("Admin API key created from LRPROBE_BOOTSTRAP_ADMIN_KEY.")


def migrate_command(
    revision: str = typer.Option("head", help="Alembic revision to upgrade to."),
) -> None:
    """Upgrade the database schema (and create the bootstrap admin key if configured)."""
    require_extra("service", "migrate")
    from lrprobe.cli.database import database_errors, load_settings, make_data_dir
    from lrprobe.service import migrate

    settings = load_settings()
    if settings.database_url is None:
        make_data_dir(settings)
    with database_errors(settings.resolved_database_url):
        migrate.upgrade(settings.resolved_database_url, revision)
        typer.echo(f"database at {revision}")
        if settings.bootstrap_admin_key is not None:
            _ensure_admin(settings, announce=False)


def serve_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    worker: bool = typer.Option(
        True, "--worker/--no-worker", help="Run the embedded worker and reaper processes."
    ),
    migrate_first: bool = typer.Option(
        True,
        "--migrate/--no-migrate",
        help="Upgrade the schema before serving (embedded). In production the one-shot "
        "`lrprobe migrate` does it, and the API refuses to start off head.",
    ),
) -> None:
    """Run lrprobe locally (API, worker and reaper; OpenAPI at /docs)."""
    require_extra("service", "serve")
    import uvicorn

    from lrprobe.cli.database import database_errors, load_settings, make_data_dir
    from lrprobe.service import migrate
    from lrprobe.service.app import create_app
    from lrprobe.service.embedded import repair_local_broker, start_background_services
    from lrprobe.service.errors import ServiceUnavailableError

    settings = load_settings()
    _require_free_port(host, port)
    make_data_dir(settings)
    with database_errors(settings.resolved_database_url):
        if migrate_first:
            migrate.upgrade(settings.resolved_database_url)
        _ensure_admin(settings, announce=True)
    if worker and not has_extra("worker"):
        # The API and dashboard run without torch; jobs wait in the queue for a worker.
        typer.echo(
            "No embedded worker: running probes needs the worker extra "
            f"({', '.join(missing_modules('worker'))} not installed): pip install "
            "'lrprobe[worker]'. Serving the API and dashboard only; jobs stay queued."
        )
        worker = False
    repaired = repair_local_broker(settings)
    if repaired is not None:
        typer.echo(repaired)
    background = start_background_services(settings) if worker else None
    if worker:  # embedded: a finished example job greets the first visit
        from lrprobe.service.dashboard.example import ensure_example_job

        try:
            ensure_example_job(settings)
        except ServiceUnavailableError as exc:  # /readyz says why; serving goes on
            typer.echo(f"The example job was not submitted: {exc.detail}")
    typer.echo(f"Dashboard: http://{host}:{port}/ui/  (sign in with an API key)")
    # uvicorn re-raises the SIGTERM it handled once the server has stopped; turning it into
    # SystemExit lets the finally below stop the worker and reaper instead of orphaning them.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(
            create_app(settings), host=host, port=port,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )  # fmt: skip
    finally:
        if background is not None:
            background.stop()
