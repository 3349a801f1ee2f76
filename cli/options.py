"""Options shared by `lrprobe probe` (local) and `lrprobe submit` (service): one probe spec,
one set of flags, and the parsers for their JSON values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

Arch = Annotated[str | None, typer.Option(help="Built-in architecture (mlp, cnn, resnet, gpt).")]
ArchConfig = Annotated[str | None, typer.Option(help="Architecture config as JSON, or @file.json.")]
Loss = Annotated[str, typer.Option(help="cross_entropy | mse | bce | lm_cross_entropy.")]
Optimizer = Annotated[
    str,
    typer.Option(help="sgd | momentum | adam | adamw | rmsprop | adagrad | nadam | radam | lion."),
]
Momentum = Annotated[float, typer.Option(help="Momentum β (momentum only).")]
WeightDecay = Annotated[float, typer.Option(help="Weight decay of your optimizer.")]
Partition = Annotated[
    str,
    typer.Option(
        help="layer | block | kind | tensor | single, or {regex: group} rules as JSON / @file."
    ),
]
MaxGroups = Annotated[
    int | None, typer.Option(help="At most this many groups (default: automatic, 16).")
]
Batches = Annotated[
    int, typer.Option(help="The probe's budget: grouped-Newton trajectory steps (40 benchmarked).")
]
BatchSize = Annotated[int, typer.Option(help="Examples per batch.")]
HeldoutBatches = Annotated[int, typer.Option(help="Held-out batches for the check.")]
BlockSize = Annotated[int | None, typer.Option(help="Tokens per sequence (LMs).")]
MicroBatch = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Examples per pass: larger batches are accumulated, exactly (default: whole "
        "batches; memory that runs out halves it).",
    ),
]
CalibrationSteps = Annotated[
    int,
    typer.Option(
        min=1, help="Steps of each λ₁ calibration run (40 benchmarked; doubled for 'momentum')."
    ),
]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda.")]
JsonOut = Annotated[
    Path | None, typer.Option("--json", help="Also write the full result as JSON here.")
]


def json_arg(value: str | None) -> Any:
    """A JSON option value, inline or ``@path`` to a file; ValueError names the bad value."""
    if value is None:
        return None
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{value!r} is not valid JSON ({exc.msg})") from None


def partition_arg(value: str) -> Any:
    return value if value in ("layer", "block", "kind", "tensor", "single") else json_arg(value)
