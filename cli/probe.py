"""`lrprobe probe`: run a probe on your own checkpoint and data, locally, no server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.errors import fail


def probe_command(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint file or HF model folder.")],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="A local file, or builtin://NAME, file://, https://, s3://, gs:// reference.",
        ),
    ],
    arch: Annotated[str | None, typer.Option(help="Built-in architecture (mlp, cnn, …).")] = None,
    arch_config: Annotated[
        str | None, typer.Option(help="Architecture config as JSON, or @file.json.")
    ] = None,
    loss: Annotated[
        str, typer.Option(help="cross_entropy | mse | bce | lm_cross_entropy.")
    ] = "cross_entropy",
    optimizer: Annotated[str, typer.Option(help="sgd | momentum | adam | adamw.")] = "sgd",
    momentum: Annotated[float, typer.Option(help="Momentum β (momentum).")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="Weight decay of your optimizer.")] = 0.0,
    partition: Annotated[
        str,
        typer.Option(help="layer | tensor | single, or {regex: group} rules as JSON / @file."),
    ] = "layer",
    max_groups: Annotated[int | None, typer.Option(help="Merge consecutive groups.")] = None,
    batches: Annotated[int, typer.Option(help="Probe batches K.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Examples per batch.")] = 128,
    heldout_batches: Annotated[int, typer.Option(help="Held-out batches for the check.")] = 4,
    block_size: Annotated[int | None, typer.Option(help="Tokens per sequence (LMs).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    data_root: Annotated[
        list[Path] | None, typer.Option(help="Directory file:// references may read (repeat).")
    ] = None,
    allow_host: Annotated[
        list[str] | None, typer.Option(help="Host remote references may fetch from (repeat).")
    ] = None,
    allow_pt2: Annotated[
        bool, typer.Option(help="Accept torch.export .pt2 archives (see the README).")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the full result as JSON here.")
    ] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of unexpected errors.")] = False,
) -> None:
    """Probe a checkpoint on your data and print one learning rate per layer."""
    from rich.console import Console

    from cli.render import print_result, probe_progress
    from worker.intake.data_policy import DataPolicy
    from worker.intake.errors import IntakeError
    from worker.newton import NumericalError, OptimizerSpec
    from worker.pipeline import ProbeRequest, load_inputs, run_probe

    try:
        uri, roots = _data_reference(data, data_root or [])
        request = ProbeRequest(
            loss=loss,
            optimizer=OptimizerSpec(
                name=optimizer,  # type: ignore[arg-type]
                momentum=momentum,
                weight_decay=weight_decay,
            ),
            partition=_partition(partition),
            max_groups=max_groups,
            batches=batches,
            batch_size=batch_size,
            heldout_batches=heldout_batches,
            block_size=block_size,
            seed=seed,
            device=device,
        )
        policy = DataPolicy(
            roots=tuple(roots),
            allowed_hosts=tuple(allow_host or ()),
            cache_dir=Path.home() / ".cache" / "lrprobe" / "data",
        )
        loaded, dataset = load_inputs(
            model, uri, policy, request, arch=arch, arch_config=_json_arg(arch_config),
            allow_pt2=allow_pt2,
        )  # fmt: skip
        console = Console()
        console.print(
            f"{loaded.format} checkpoint, {loaded.num_params:,} parameters in "
            f"{len(loaded.partition)} layers; data {dataset.name}: {dataset.num_examples:,} "
            "examples"
        )
        with probe_progress() as progress:
            result = run_probe(loaded.model, dataset, request, progress)
    except (IntakeError, NumericalError) as exc:
        fail(exc.message if isinstance(exc, IntakeError) else str(exc), code=exc.code)
    except ValueError as exc:
        fail(str(exc), code="invalid_argument")
    except Exception as exc:
        if debug:
            raise
        fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)")
    print_result(result, console)
    if json_out is not None:
        json_out.write_text(result.to_json(indent=2))
        console.print(f"full result written to {json_out}")


def _data_reference(data: str, roots: list[Path]) -> tuple[str, list[Path]]:
    """A plain local path becomes a file:// reference whose folder may be read."""
    if "://" in data:
        return data, [r.resolve() for r in roots] or [Path.cwd().resolve()]
    path = Path(data).expanduser().resolve()
    return path.as_uri(), [path.parent, *(r.resolve() for r in roots)]


def _json_arg(value: str | None) -> Any:
    if value is None:
        return None
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{value!r} is not valid JSON ({exc.msg})") from None


def _partition(value: str) -> Any:
    return value if value in ("layer", "tensor", "single") else _json_arg(value)
