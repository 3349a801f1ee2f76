"""From a checkpoint path, a data reference and a probe request to a ProbeResult.

Shared by the job runner (service jobs) and ``lrprobe probe`` (local use), so a probe behaves
the same wherever it runs. Everything a user sends goes through the intake; nothing is executed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrprobe.worker.intake.checkpoints.loading import LoadedModel, load_checkpoint
from lrprobe.worker.intake.data.batching import ProbeBatches
from lrprobe.worker.intake.data.dataset import Dataset
from lrprobe.worker.intake.data.policy import DataPolicy
from lrprobe.worker.intake.data.references import open_dataset
from lrprobe.worker.intake.errors import IntakeError
from lrprobe.worker.intake.losses import check_loss, get_loss
from lrprobe.worker.newton import OptimizerSpec, PartitionRule, ProbeProgress, ProbeResult, probe


@dataclass(frozen=True)
class ProbeRequest:
    """What to probe with: the fields of a job spec that the probe itself needs."""

    loss: str = "cross_entropy"
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    partition: PartitionRule = "layer"
    max_groups: int | None = None  # None: the core's automatic cap
    batches: int = 40  # the budget: trajectory steps (default method)
    batch_size: int = 128
    heldout_batches: int = 4
    block_size: int | None = None
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    micro_batch: int | None = None  # examples per pass; None: the whole batch
    calibration_steps: int = 40  # each λ₁ calibration run (doubled with heavy ball)


def select_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise IntakeError(
            "device_unavailable",
            "CUDA was asked for but no GPU is available here; use device 'auto' or 'cpu'.",
        )
    return torch.device("cpu")


def load_inputs(
    checkpoint: Path,
    data: str,
    policy: DataPolicy,
    request: ProbeRequest,
    *,
    arch: str | None = None,
    arch_config: dict[str, Any] | None = None,
    max_bytes: int | None = None,
    allow_pt2: bool = False,
) -> tuple[LoadedModel, Dataset]:
    loaded = load_checkpoint(
        checkpoint, arch=arch, arch_config=arch_config, max_bytes=max_bytes, allow_pt2=allow_pt2
    )
    dataset = open_dataset(data, policy, block_size=request.block_size)
    return loaded, dataset


def run_probe(
    model: nn.Module,
    dataset: Dataset,
    request: ProbeRequest,
    progress: Callable[[ProbeProgress], None] | None = None,
) -> ProbeResult:
    """Check the data against the model and the loss, then probe on the requested device.

    Raises:
        IntakeError: the model, data and loss do not fit together (a code and advice).
        NumericalError: from the core (non-finite loss or derivatives).
    """
    device = select_device(request.device)
    model = model.to(device)
    check_loss(request.loss, dataset, _sample_output(model, dataset, device))
    batches = ProbeBatches(dataset, request.batch_size, request.seed)
    return probe(
        model,
        get_loss(request.loss),
        _on_device(batches, device),
        optimizer=request.optimizer,
        partition=request.partition,
        max_groups="auto" if request.max_groups is None else request.max_groups,
        # The budget bounds both methods: trajectory steps take one batch each, the fixed
        # probe two per probe batch; the trajectory needs at least two steps.
        steps=max(request.batches, 2),
        num_batches=request.batches,
        heldout_batches=request.heldout_batches,
        seed=request.seed,
        progress=progress,
        micro_batch=request.micro_batch,
        calibration_steps=request.calibration_steps,
    )


def _on_device(batches: ProbeBatches, device: torch.device) -> Iterator[tuple[Any, Any]]:
    for x, y in batches:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _sample_output(model: nn.Module, dataset: Dataset, device: torch.device) -> Any:
    """The model's output on two examples, leaving every BatchNorm buffer as it was.

    Built-in modules run in eval mode. A ``torch.export`` module has its mode fixed at export
    (``eval()`` raises ``NotImplementedError``), so it runs as exported and its buffers are put
    back afterwards.
    """
    x = dataset.x[: min(2, dataset.num_examples)]
    if dataset.kind == "tokens":
        x = x.to(torch.int64)
    training = model.training
    saved: dict[str, torch.Tensor] | None = None
    try:
        model.eval()
    except NotImplementedError:
        saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        with torch.no_grad():
            return model(x.to(device))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise IntakeError(
            "incompatible_model_input",
            f"The model cannot take this data's examples of shape {tuple(x.shape[1:])} ({exc}); "
            "check the architecture config against the data.",
        ) from None
    finally:
        if saved is None:
            model.train(training)
        else:
            with torch.no_grad():
                for name, value in saved.items():
                    model.get_buffer(name).copy_(value)
