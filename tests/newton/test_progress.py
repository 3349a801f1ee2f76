"""Progress ticks: every phase a probe reports is one that ``ProbeProgress.phase`` declares, and
the count ends at the announced total."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from torch import nn

from lrprobe.worker.newton import ProbeProgress, losses, minibatches, probe
from lrprobe.worker.newton.probe import Method, Phase


def _ticks(method: Method) -> list[ProbeProgress]:
    torch.manual_seed(0)
    x, y = torch.randn(128, 6), torch.randint(0, 3, (128,))
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    ticks: list[ProbeProgress] = []
    probe(
        model, losses.cross_entropy, minibatches(x, y, batch_size=32, seed=1), "adam",
        method=method, steps=4, period=2, calibration_steps=2, num_batches=2,
        heldout_batches=1, bootstrap=5, progress=ticks.append,
    )  # fmt: skip
    return ticks


@pytest.mark.parametrize(
    ("method", "phases"),
    [
        ("fixed", ["second_moment", "summaries", "check"]),  # adam needs the second moment
        ("trajectory", ["trajectory", "calibration"]),
    ],
)
def test_each_method_reports_its_declared_phases_in_order(
    method: Method, phases: list[str]
) -> None:
    ticks = _ticks(method)

    reported = list(dict.fromkeys(t.phase for t in ticks))
    assert reported == phases
    assert set(reported) <= set(get_args(Phase))
    assert [t.done for t in ticks] == sorted(t.done for t in ticks)
    assert ticks[-1].done == ticks[-1].total


def test_the_declared_phases_are_exactly_those_the_methods_report() -> None:
    reported = {t.phase for method in get_args(Method) for t in _ticks(method)}
    assert reported == set(get_args(Phase))
