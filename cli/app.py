"""Root of the ``lrprobe`` command. Sub-commands import their heavy dependencies lazily so that
``lrprobe --help`` stays fast and the SDK commands work without torch."""

from __future__ import annotations

import typer

from lrprobe.cli.extras import require_extra

app = typer.Typer(
    name="lrprobe",
    help="Per-layer learning rates for PyTorch models from one short grouped-Newton probe.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from lrprobe import __version__

        typer.echo(f"lrprobe {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Per-layer learning rates for PyTorch models from one short grouped-Newton probe."""


@app.command()
def demo(
    batches: int = typer.Option(8, help="Probe batches K."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Probe a small MLP on scikit-learn's digits and print its per-layer learning rates."""
    require_extra("worker", "demo")
    from lrprobe.cli.demo import run_demo

    run_demo(batches=batches, seed=seed)


def _register() -> None:
    from lrprobe.cli.probe import probe_command

    app.command("probe")(probe_command)


_register()


def _register_service() -> None:
    from lrprobe.cli.keys import keys_app
    from lrprobe.cli.serve import migrate_command, serve_command

    app.command("serve")(serve_command)
    app.command("migrate")(migrate_command)
    app.add_typer(keys_app, name="keys")


_register_service()


def _register_remote() -> None:
    from lrprobe.cli.jobs import jobs_app, submit_command
    from lrprobe.cli.models import datasets_app, models_app

    app.command("submit")(submit_command)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(models_app, name="models")
    app.add_typer(datasets_app, name="datasets")


_register_remote()


def main() -> None:
    app()
