"""Terminal rendering of probe results and progress, shared by `lrprobe demo` and `probe`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from worker.newton import ProbeProgress, ProbeResult


def result_table(result: ProbeResult) -> Table:
    table = Table(title="Recommended learning rates", title_justify="left")
    table.add_column("group")
    table.add_column("params", justify="right")
    table.add_column("lr", justify="right", style="bold")
    table.add_column("interval (10–90 %)", justify="right")
    table.add_column("η", justify="right")
    table.add_column("flags", style="yellow")
    for g in result.groups:
        lo, hi = g.lr_interval
        table.add_row(
            g.name, f"{g.numel:,}", f"{g.lr:.4g}", f"{lo:.3g} – {hi:.3g}", f"{g.eta:.4g}",
            ", ".join(g.flags),
        )  # fmt: skip
    return table


def print_result(result: ProbeResult, console: Console | None = None) -> None:
    console = console or Console()
    console.print(result_table(result))
    lo, hi = result.single_group_interval
    console.print(
        f"single-group lr [bold]{result.single_group_lr:.4g}[/] (interval {lo:.3g} – {hi:.3g})"
    )
    console.print(
        f"optimizer {result.optimizer['name']} · direction: {result.direction} · "
        f"scale λ₁ = {result.scale:g} · solver: {result.status}"
    )
    cost = result.cost
    console.print(
        f"cost: {cost.batches} batches, {cost.fb_equivalents:.0f} forward+backward equivalents, "
        f"{cost.seconds:.1f} s on {cost.device}"
    )
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")


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
