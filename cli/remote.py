"""What the commands over the HTTP API share: the ``--url``/``--api-key``/``--format`` options,
one client, errors as one line with an exit code, and rendering of jobs and recommendations.

Exit codes, by the family of the code in the error catalogue (``lrprobe.cli.errors``): 0 ok ·
1 the request or the job failed (the line names the problem code) · 2 usage (bad flags,
unreadable files) · 3 authentication (no key, a wrong or revoked key, not an admin key) ·
4 ``--timeout`` ran out while waiting (the job goes on).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lrprobe.cli.errors import fail

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.table import Table

    from lrprobe.client import Client, Job
    from lrprobe.client.schemas import JobOut


class Format(StrEnum):
    table = "table"
    json = "json"


Url = Annotated[
    str | None,
    typer.Option("--url", envvar="LRPROBE_URL", help="The lrprobe service (default "
                 "http://127.0.0.1:8000)."),
]  # fmt: skip
ApiKey = Annotated[
    str | None, typer.Option("--api-key", envvar="LRPROBE_API_KEY", help="Your API key (lrp_…).")
]
FormatOption = Annotated[Format, typer.Option("--format", help="table or json.")]


@contextmanager
def connect(url: str | None, api_key: str | None) -> Iterator[Client]:
    """A client whose errors end the command with one line and an exit code."""
    from lrprobe.client import Client

    with api_errors(), Client(url, api_key) as lrp:
        yield lrp


@contextmanager
def api_errors() -> Iterator[None]:
    from lrprobe.client import LrprobeError

    try:
        yield
    except LrprobeError as exc:
        fail(exc.detail, code=exc.code, status=exc.status)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        fail(str(exc), code="file_not_found")


def echo_json(value: BaseModel | list[BaseModel] | dict[str, Any] | list[Any]) -> None:
    typer.echo(json.dumps(_jsonable(value), indent=2))


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def print_table(table: Table) -> None:
    from rich.console import Console

    Console(width=output_width()).print(table)


# Wide enough for any row of our tables when the output is a file or another program.
PIPED_WIDTH = 1000


def output_width() -> int:
    """The terminal's width, or PIPED_WIDTH when the output is a file or another program (no
    width to fit there: rows keep their natural length, every column included)."""
    from rich.console import Console

    console = Console()
    return console.width if console.is_terminal else PIPED_WIDTH


# Below this many columns the job list folds progress into the status and leaves out the
# creation time and the data reference (``jobs show`` has both): beside the 32-character ids
# there is room for the error code, which says what to do next, and little else.
WIDE_LIST = 100


def jobs_table(jobs: list[Job], width: int | None = None) -> Table:
    """The job list for a terminal ``width`` columns wide (by default :func:`output_width`:
    all columns when the output is not a terminal)."""
    from rich.markup import escape
    from rich.table import Table

    wide = (output_width() if width is None else width) >= WIDE_LIST
    table = Table(title=None, box=None, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=32)
    table.add_column("status", no_wrap=True)
    if wide:
        table.add_column("progress", no_wrap=True)
        table.add_column("created", no_wrap=True)
    table.add_column("label / error", overflow="fold")
    if wide:
        table.add_column("data", overflow="fold")
    for job in jobs:
        data = job.data
        p = data.progress
        progress = f"{p.done}/{p.total}" if p.total else "-"
        # Labels and data references are the user's text, never rich markup.
        note = data.error.code if data.error else escape(data.label or "")
        status = _status(data)
        if wide:
            table.add_row(data.id, status, progress, f"{data.created_at:%Y-%m-%d %H:%M}", note,
                          escape(data.spec.data))  # fmt: skip
        else:
            running = p.total and not data.finished_at
            table.add_row(data.id, status + (f" {progress}" if running else ""), note)
    return table


def _status(job: JobOut) -> str:
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(job.status)
    text = job.status + (" (cancel requested)" if job.cancel_requested and not job.error else "")
    return f"[{colour}]{text}[/]" if colour else text


def print_job(job: JobOut) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    spec = job.spec
    optimizer = spec.optimizer.name
    partition = spec.partition.rule if isinstance(spec.partition.rule, str) else "regex"
    rows = [
        ("job", job.id),
        ("status", _status(job)),
        ("model", job.model_id),
        ("data", spec.data),
        ("spec", f"loss {spec.loss} · optimizer {optimizer} · partition {partition} · "
                 f"{spec.budget.batches} batches of {spec.budget.batch_size} · seed {spec.seed}"),
        ("progress", f"{job.progress.done}/{job.progress.total} {job.progress.phase or ''}"),
        ("created", f"{job.created_at:%Y-%m-%d %H:%M:%S}"),
    ]  # fmt: skip
    if job.finished_at:
        rows.append(("finished", f"{job.finished_at:%Y-%m-%d %H:%M:%S}"))
    if job.label:
        rows.append(("label", job.label))
    if job.error:
        rows.append(("error", f"{job.error.detail} [{job.error.code}]"))
    for name, value in rows:
        # Only the status is markup (its colour); the rest is text, brackets included (the
        # error's [code], a label like "run[3]").
        shown = value if name == "status" else escape(value)
        console.print(f"[bold]{name:>9}[/]  {shown}")
