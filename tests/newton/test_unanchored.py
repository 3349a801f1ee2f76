"""Evaluations whose single-group η is not positive: the bounds have no anchor there.

An 8-layer ReLU MLP at init on digits sits on a plateau where the curvature along the whole
step is often negative. Each test re-derives the rates of every evaluation from the raw η and
the single-group η the trajectory recorded, so it checks the rule, not a figure."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

import lrprobe.worker.newton.trajectory as trajectory
from lrprobe.worker.newton import losses, minibatches, probe
from lrprobe.worker.newton.trajectory import Trajectory

BOUNDS, SMOOTHING = 10.0, 0.5


def _deep_relu_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    widths = [64, *[48] * 7]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(48, 10))


def _trajectories(monkeypatch: pytest.MonkeyPatch, unanchored: str) -> list[Trajectory]:
    """The trajectory of a probe per seed (calibration off: only the trajectory matters)."""
    features, labels = load_digits(return_X_y=True)
    x, y = torch.tensor(features / 16.0, dtype=torch.float32), torch.tensor(labels)
    seen: list[Trajectory] = []
    run = trajectory.run_trajectory

    def recorded(*args: Any, **kwargs: Any) -> Trajectory:
        seen.append(run(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(trajectory, "run_trajectory", recorded)
    for seed in range(3):
        probe(_deep_relu_mlp(seed), losses.cross_entropy,
              minibatches(x, y, batch_size=32, seed=seed), optimizer="sgd", steps=24,
              calibrate=(), bounds=BOUNDS, unanchored=unanchored)  # type: ignore[arg-type]  # fmt: skip
    return seen


def _expected(traj: Trajectory, unanchored: str) -> Tensor:
    """The smoothed rates of every evaluation, re-derived from the recorded η and η₁."""
    rows, smoothed, anchor = [], torch.zeros(traj.etas.shape[1], dtype=torch.float64), None
    for i, (eta, single) in enumerate(zip(traj.etas, traj.single.tolist(), strict=True)):
        if single > 0:
            anchor = single
        elif unanchored == "last" and anchor is None:
            anchor = float(eta[eta > 0].median())
        if unanchored == "hold" and i > 0 and not single > 0:
            rows.append(smoothed.clone())
            continue
        around = anchor if unanchored == "last" else single
        update = eta.clamp(min=0)
        if around is not None and around > 0:
            update = update.clamp(min=around / BOUNDS, max=around * BOUNDS)
        update[eta == 0] = 0.0  # a dropped group (η exactly 0: its step does not move the loss)
        rho = SMOOTHING if i else 0.0
        smoothed = rho * smoothed + (1 - rho) * update
        rows.append(smoothed.clone())
    return torch.stack(rows)


@pytest.mark.parametrize("unanchored", ["relu", "hold", "last"])
def test_rates_at_evaluations_without_an_anchor_follow_the_rule(
    monkeypatch: pytest.MonkeyPatch, unanchored: str
) -> None:
    seen = _trajectories(monkeypatch, unanchored)
    # The case must have evaluations without an anchor after the first, or the test is empty.
    assert sum(int((t.single[1:] <= 0).sum()) for t in seen) >= 2
    for traj in seen:
        # to the bit: "relu" must be the rule as it was before the option existed
        torch.testing.assert_close(traj.smoothed, _expected(traj, unanchored), rtol=0, atol=0)


def test_without_an_anchor_relu_lets_a_group_leave_the_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What "hold" and "last" are for: under the default, some rate lies farther than the
    bounds from every positive single-group η the run has seen."""
    seen = _trajectories(monkeypatch, "relu")
    worst = 0.0
    for traj in seen:
        positive = traj.single[traj.single > 0]
        if len(positive):
            worst = max(worst, float(traj.smoothed.max() / positive.max()))
    assert worst > BOUNDS


def test_an_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unanchored"):
        trajectory.TrajectoryOptions(unanchored="clip")  # type: ignore[arg-type]
