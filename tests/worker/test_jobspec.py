"""The worker reads a stored spec with the API's own schema (what the API refuses, it refuses)
and converts it once for the probe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lrprobe.client.schemas import JobCreate
from lrprobe.service.broker import job_time_limit
from lrprobe.worker.jobspec import SpecError, optimizer_spec, parse_spec, probe_request
from lrprobe.worker.newton import OptimizerSpec, ParamGroupSpec
from tests.support.settings import make_settings

STORED = {"model_id": "m1", "data": "builtin://digits", "loss": "mse"}


def test_a_stored_spec_is_read_with_the_wire_schema_and_its_defaults() -> None:
    spec = parse_spec(STORED)
    assert spec == JobCreate(model_id="m1", data="builtin://digits", loss="mse")
    assert spec.budget.batches == 40


@pytest.mark.parametrize(
    "change",
    [
        {"optimizer": {"name": "momentum", "dampening": 1.0}},  # the API allows [0, 1)
        {"budget": {"time_limit_s": 5}},  # the API allows at least 10 s
        {"budget": {"calibration_steps": 0}},  # 1-256
        {"budget": {"micro_batch": 8193}},  # 1-8192
        {"loss": "hinge"},
    ],
)
def test_a_spec_the_api_refuses_is_refused_with_pydantic_s_reason(change: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match=next(iter(change))):
        parse_spec(STORED | change)


def test_the_wire_optimizer_becomes_the_cores_with_its_groups_and_own_defaults() -> None:
    spec = parse_spec(
        STORED
        | {
            "optimizer": {
                "name": "adamw",
                "weight_decay": 0.1,
                "options": {"amsgrad": True},
                "param_groups": [{"params": ["fc.bias"], "weight_decay": 0.0}],
            }
        }
    )
    core = optimizer_spec(spec.optimizer)
    assert core == OptimizerSpec(
        "adamw",
        momentum=0.0,
        weight_decay=0.1,
        options={"amsgrad": True},
        param_groups=(ParamGroupSpec(("fc.bias",), {"weight_decay": 0.0}),),
    )
    assert optimizer_spec(parse_spec(STORED | {"optimizer": "lion"}).optimizer).betas == (0.9, 0.99)


def test_a_job_spec_is_probed_with_its_own_budget_partition_and_optimizer() -> None:
    spec = parse_spec(
        STORED
        | {
            "optimizer": "momentum",
            "partition": {"rule": "tensor", "max_groups": 3},
            "budget": {"batches": 7, "batch_size": 16, "heldout_batches": 2},
            "seed": 5,
        }
    )
    request = probe_request(spec)
    assert (request.loss, request.partition, request.max_groups) == ("mse", "tensor", 3)
    assert (request.batches, request.batch_size, request.heldout_batches) == (7, 16, 2)
    assert (request.seed, request.optimizer.name, request.optimizer.momentum) == (
        5,
        "momentum",
        0.9,
    )
    # The calibration length and the micro-batch default as in `lrprobe probe`.
    assert (request.calibration_steps, request.micro_batch) == (40, None)


def test_a_job_spec_sets_the_calibration_length_and_the_micro_batch() -> None:
    spec = parse_spec(STORED | {"budget": {"calibration_steps": 4, "micro_batch": 2}})
    request = probe_request(spec)
    assert (request.calibration_steps, request.micro_batch) == (4, 2)


@pytest.mark.parametrize(
    ("stored", "limit"),
    [
        (STORED | {"budget": {"time_limit_s": 30.0}}, 30.0),
        (STORED, 900.0),  # the server's default
        ({"budget": {"time_limit_s": "soon"}}, 900.0),  # a spec the runner will refuse
        (None, 900.0),
    ],
)
def test_the_time_limit_is_the_specs_or_the_servers_default(
    stored: dict[str, Any] | None, limit: float, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, default_time_limit_seconds=900.0)
    assert job_time_limit(stored, settings) == limit
