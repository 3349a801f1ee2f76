"""Terminal rendering of recommendations and probe progress, shared by every command (a local
`ProbeResult` is shown through the SDK's `Recommendation`, so both look the same)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from lrprobe.client import Recommendation
    from lrprobe.worker.newton import ProbeProgress


def recommendation_table(rec: Recommendation) -> Table:
    table = Table(title="Recommended learning rates", title_justify="left")
    table.add_column("group")
    table.add_column("params", justify="right")
    table.add_column("lr", justify="right", style="bold")
    table.add_column("interval (10–90 %)", justify="right")
    table.add_column("η", justify="right")
    table.add_column("flags", style="yellow")
    for g in rec.groups:
        # Group names can be the user's own (a regex partition's): text, never markup.
        table.add_row(
            escape(g.name), f"{g.numel:,}", _num(g.lr),
            f"{_num(g.interval[0])} – {_num(g.interval[1])}", _num(g.eta), ", ".join(g.flags),
        )  # fmt: skip
    return table


def print_recommendation(rec: Recommendation, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    console.print(recommendation_table(rec))
    lo, hi = rec.single_group_interval
    console.print(
        f"single-group lr [bold]{_num(rec.single_group_lr)}[/] (interval {_num(lo)} – {_num(hi)})"
    )
    cost = rec.data.cost
    console.print(
        f"optimizer {rec.optimizer.get('name', '?')} · direction: {rec.data.direction} · "
        f"scale λ₁ = {rec.data.scale:g} · {rec.method_version}"
    )
    console.print(f"cost: {cost.batches} batches, {cost.seconds:.1f} s on {cost.device}")
    for note in rec.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@contextmanager
def probe_progress(console: Console | None = None) -> Iterator[Any]:
    """A progress bar; yields the callback to pass to ``probe(progress=...)``."""
    labels = {
        "second_moment": "Adam second moments",
        "summaries": "probe batches",
        "check": "held-out check",
    }
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("probing", total=None)

        def update(event: ProbeProgress) -> None:
            bar.update(
                task,
                completed=event.done,
                total=event.total,
                description=labels.get(event.phase, event.phase),
            )

        yield update
