"""`lrprobe probe`: run a probe on your own checkpoint and data, locally, no server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer
from pydantic import ValidationError

from lrprobe.cli import options as opt
from lrprobe.cli.errors import fail
from lrprobe.cli.extras import require_extra
from lrprobe.client.schemas import OptimizerName, OptimizerSpec


def probe_command(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint file or HF model folder.")],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="A local file, or builtin://NAME, file://, https://, s3://, gs:// reference.",
        ),
    ],
    arch: opt.Arch = None,
    arch_config: opt.ArchConfig = None,
    loss: opt.Loss = "cross_entropy",
    optimizer: opt.Optimizer = "sgd",
    momentum: opt.Momentum = 0.9,
    weight_decay: opt.WeightDecay = 0.0,
    partition: opt.Partition = "layer",
    max_groups: opt.MaxGroups = None,
    batches: opt.Batches = 40,
    batch_size: opt.BatchSize = 128,
    heldout_batches: opt.HeldoutBatches = 4,
    block_size: opt.BlockSize = None,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    micro_batch: opt.MicroBatch = None,
    calibration_steps: opt.CalibrationSteps = 40,
    data_root: Annotated[
        list[Path] | None, typer.Option(help="Directory file:// references may read (repeat).")
    ] = None,
    allow_host: Annotated[
        list[str] | None, typer.Option(help="Host remote references may fetch from (repeat).")
    ] = None,
    allow_pt2: Annotated[
        bool, typer.Option(help="Accept torch.export .pt2 archives (see the README).")
    ] = False,
    json_out: opt.JsonOut = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of unexpected errors.")] = False,
) -> None:
    """Probe a checkpoint on your data and print one learning rate per layer."""
    require_extra("worker", "probe")
    from rich.console import Console

    from lrprobe.cli.render import print_recommendation, probe_progress
    from lrprobe.client import Recommendation
    from lrprobe.worker.intake.data.policy import DataPolicy
    from lrprobe.worker.intake.errors import IntakeError
    from lrprobe.worker.jobspec import optimizer_spec
    from lrprobe.worker.newton import NumericalError, OutOfMemoryProbeError
    from lrprobe.worker.pipeline import ProbeRequest, load_inputs, run_probe

    try:
        uri, roots = _data_reference(data, data_root or [])
        request = ProbeRequest(
            loss=loss,
            optimizer=optimizer_spec(_wire_optimizer(optimizer, momentum, weight_decay)),
            partition=opt.partition_arg(partition),
            max_groups=max_groups,
            batches=batches,
            batch_size=batch_size,
            heldout_batches=heldout_batches,
            block_size=block_size,
            seed=seed,
            device=device,
            micro_batch=micro_batch,
            calibration_steps=calibration_steps,
        )
        policy = DataPolicy(
            roots=tuple(roots),
            allowed_hosts=tuple(allow_host or ()),
            cache_dir=Path.home() / ".cache" / "lrprobe" / "data",
        )
        loaded, dataset = load_inputs(
            model, uri, policy, request, arch=arch, arch_config=opt.json_arg(arch_config),
            allow_pt2=allow_pt2,
        )  # fmt: skip
        console = Console()
        console.print(
            f"{loaded.format} checkpoint, {loaded.num_params:,} parameters in "
            f"{len(loaded.partition)} layers; data {dataset.name}: {dataset.num_examples:,} "
            "examples",
            markup=False,  # a data set's name is its file's: text, brackets included
        )
        with probe_progress() as progress:
            result = run_probe(loaded.model, dataset, request, progress)
    except (IntakeError, NumericalError, OutOfMemoryProbeError) as exc:
        fail(exc.detail, code=exc.code)
    except ValueError as exc:  # the core's argument checks, as a job reports them
        fail(str(exc), code="invalid_probe_arguments")
    except Exception as exc:
        if debug:
            raise
        fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)")
    print_recommendation(Recommendation.from_dict(result.to_dict()), console)
    if json_out is not None:
        json_out.write_text(result.to_json(indent=2))
        console.print(f"full result written to {json_out}")


def _wire_optimizer(name: str, momentum: float, weight_decay: float) -> OptimizerSpec:
    """The options as the job spec's optimizer, so that a local probe reads them as a job does.

    Raises:
        ValueError: the name or a value is not one the schema takes (says which).
    """
    if name not in get_args(OptimizerName):
        raise ValueError(
            f"unknown optimizer {name!r}: use one of {', '.join(get_args(OptimizerName))}"
        )
    body: dict[str, object] = {"name": name, "weight_decay": weight_decay}
    if name == "momentum":  # the others keep their own default (RMSprop's momentum is 0)
        body["momentum"] = momentum
    try:
        return OptimizerSpec.model_validate(body)
    except ValidationError as exc:
        raise ValueError("; ".join(str(e["msg"]) for e in exc.errors())) from None


def _data_reference(data: str, roots: list[Path]) -> tuple[str, list[Path]]:
    """A plain local path becomes a file:// reference whose folder may be read."""
    if "://" in data:
        return data, [r.resolve() for r in roots] or [Path.cwd().resolve()]
    path = Path(data).expanduser().resolve()
    return path.as_uri(), [path.parent, *(r.resolve() for r in roots)]
