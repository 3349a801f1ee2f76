"""One-line errors and exit codes shared by every command."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

EXIT_FAILURE = 1
EXIT_USAGE = 2


def fail(message: str, *, code: str | None = None, exit_code: int = EXIT_FAILURE) -> NoReturn:
    suffix = f" [{code}]" if code else ""
    # soft_wrap: the error stays one line whatever the terminal's width, so scripts can grep it.
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/] {escape(message + suffix)}"
    )
    raise typer.Exit(exit_code)
