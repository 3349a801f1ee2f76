"""The job page's copy-ready torch snippet builds the optimizer the job was probed for."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lrprobe.client import Recommendation
from lrprobe.client.schemas import JobOut
from lrprobe.service.dashboard.export import torch_snippet
from tests.client.fakes import job_body, recommendation_body


def _built(optimizer: dict[str, Any]) -> torch.optim.Optimizer:
    spec = {"model_id": "m1", "data": "builtin://digits", "loss": "cross_entropy",
            "optimizer": optimizer}  # fmt: skip
    job = JobOut.model_validate(job_body(spec=spec))
    code = torch_snippet(job, Recommendation(recommendation_body()))
    namespace: dict[str, Any] = {
        "model": nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    }
    exec(compile(code, "snippet", "exec"), namespace)
    built: torch.optim.Optimizer = namespace["optimizer"]
    assert [g["lr"] for g in built.param_groups] == [0.1, 0.02]  # the recommended rates
    return built


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        ({"name": "rmsprop", "momentum": 0.5, "options": {"centered": True}},
         {"momentum": 0.5, "centered": True, "eps": 1e-8}),
        ({"name": "rmsprop"}, {"momentum": 0}),
        ({"name": "adagrad"}, {"eps": 1e-10}),
        ({"name": "adam", "options": {"amsgrad": True}}, {"amsgrad": True, "eps": 1e-8}),
        ({"name": "momentum", "momentum": 0.8, "nesterov": True},
         {"momentum": 0.8, "nesterov": True}),
        ({"name": "sgd", "weight_decay": 0.01}, {"momentum": 0, "weight_decay": 0.01}),
    ],
)  # fmt: skip
def test_the_snippet_builds_the_probed_optimizer_with_its_settings(
    optimizer: dict[str, Any], expected: dict[str, Any]
) -> None:
    built = _built(optimizer)
    for key, value in expected.items():
        assert built.defaults[key] == value, key


def test_the_snippet_offers_the_measured_schedule_and_its_line_runs() -> None:
    from lrprobe.service.dashboard.export import SCHEDULE_LINE

    spec = {"model_id": "m1", "data": "builtin://digits", "loss": "cross_entropy",
            "optimizer": {"name": "sgd"}}  # fmt: skip
    job = JobOut.model_validate(job_body(spec=spec))
    code = torch_snippet(job, Recommendation(recommendation_body()))
    assert f"# {SCHEDULE_LINE}\n" in code
    namespace: dict[str, Any] = {
        "model": nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)),
        "steps": 100,
    }
    exec(compile(f"{code}import lrprobe\n{SCHEDULE_LINE}\n", "snippet", "exec"), namespace)
    scheduler = namespace["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    # the recommended rates are the peak: the first of 5 warm-up steps runs at a fifth of them
    lrs = [g["lr"] for g in namespace["optimizer"].param_groups]
    assert lrs == pytest.approx([0.1 / 5, 0.02 / 5])
