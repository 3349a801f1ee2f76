"""The probe spec as the worker reads it: the wire schema, converted once for the core.

The API validated the spec with ``lrprobe.client.schemas.JobCreate`` before it stored it; the
worker parses the stored JSON again with the same model (a row may come from an older API
version), so there is one schema for both sides. :func:`optimizer_spec` is the one conversion
from the wire optimizer to the core's (the job runner and ``lrprobe probe`` both use it).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lrprobe.client import schemas
from lrprobe.worker.newton import OptimizerSpec, ParamGroupSpec
from lrprobe.worker.pipeline import ProbeRequest

# The hyperparameters a wire parameter group may set besides its options (unset ones are None).
_GROUP_FIELDS = ("momentum", "dampening", "nesterov", "betas", "eps", "weight_decay")


class SpecError(ValueError):
    """The stored spec does not validate (a row written by an incompatible API version)."""


def parse_spec(data: dict[str, Any]) -> schemas.JobCreate:
    """The validated spec; raises :class:`SpecError` with pydantic's message."""
    try:
        return schemas.JobCreate.model_validate(data)
    except ValidationError as exc:
        raise SpecError(str(exc)) from None


def optimizer_spec(wire: schemas.OptimizerSpec) -> OptimizerSpec:
    """The core's optimizer spec for a validated wire one (defaults were applied by the schema)."""
    groups = tuple(
        ParamGroupSpec(
            tuple(group.params),
            {
                **{k: getattr(group, k) for k in _GROUP_FIELDS if getattr(group, k) is not None},
                **group.options,
            },
        )
        for group in wire.param_groups
    )
    return OptimizerSpec(
        name=wire.name,
        momentum=wire.momentum,
        dampening=wire.dampening,
        nesterov=wire.nesterov,
        betas=(wire.betas[0], wire.betas[1]),
        eps=wire.eps,
        weight_decay=wire.weight_decay,
        options=dict(wire.options),
        param_groups=groups,
    )


def probe_request(spec: schemas.JobCreate) -> ProbeRequest:
    """What a job probes with."""
    return ProbeRequest(
        loss=spec.loss,
        optimizer=optimizer_spec(spec.optimizer),
        partition=spec.partition.rule,
        max_groups=spec.partition.max_groups,
        batches=spec.budget.batches,
        batch_size=spec.budget.batch_size,
        heldout_batches=spec.budget.heldout_batches,
        calibration_steps=spec.budget.calibration_steps,
        micro_batch=spec.budget.micro_batch,
        block_size=spec.block_size,
        seed=spec.seed,
        device=spec.device,
    )
