"""One-line errors shared by every command, with the exit status of the code's family in the
error catalogue (``lrprobe.client.error_catalogue``)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from lrprobe.client.error_catalogue import Family, entry, family_for_status

EXIT_FAILURE = 1
EXIT_STATUSES: dict[Family, int] = {"usage": 2, "auth": 3, "wait": 4}
"""The exit status of an error by its code's family; every other family exits with 1."""


def exit_status(code: str | None, status: int | None = None) -> int:
    """The exit status for ``code``; a code the catalogue does not know (``http_<status>``, or a
    newer server's) goes by its HTTP ``status`` when there is one."""
    known = entry(code) if code else None
    if known is not None:
        family: Family | None = known.family
    else:
        family = family_for_status(status) if status is not None and status >= 400 else None
    return EXIT_STATUSES.get(family, EXIT_FAILURE) if family else EXIT_FAILURE


def fail(detail: str, *, code: str | None = None, status: int | None = None) -> NoReturn:
    """End the command with ``error: <detail> [<code>]`` on stderr and the code's exit status."""
    suffix = f" [{code}]" if code else ""
    # soft_wrap: the error stays one line whatever the terminal's width, so scripts can grep it.
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/] {escape(detail + suffix)}"
    )
    raise typer.Exit(exit_status(code, status))
