"""The schedules a recommendation can be the peak rate of, against torch's own schedulers."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lrprobe.worker.newton.schedules import SCHEDULES, multipliers, warmup_steps


def test_constant_keeps_the_peak_at_every_step() -> None:
    assert multipliers("constant", 7) == [1.0] * 7
    assert warmup_steps("constant", 300) == 0


def test_cosine_warms_up_linearly_then_follows_torchs_cosine_annealing() -> None:
    steps = 300
    warmup = warmup_steps("cosine", steps)
    shape = multipliers("cosine", steps)
    assert warmup == 15 and len(shape) == steps
    assert shape[:warmup] == pytest.approx([(k + 1) / warmup for k in range(warmup)])
    # After the warm-up: torch's CosineAnnealingLR from a peak of 1 down to 0 over the rest.
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps - warmup)
    expected = []
    for _ in range(steps - warmup):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        annealing.step()
    assert shape[warmup:] == pytest.approx(expected, abs=1e-12)
    assert 0 < shape[-1] < 1e-3


def test_a_contest_length_schedule_keeps_one_warm_up_step_at_least() -> None:
    assert warmup_steps("cosine", 40) == 2 and multipliers("cosine", 40)[:3] == [0.5, 1.0, 1.0]
    assert multipliers("cosine", 1) == [1.0]
    assert multipliers("cosine", 2) == [1.0, 1.0]  # one warm-up step, then the peak


def test_unknown_schedules_and_empty_runs_are_refused() -> None:
    assert SCHEDULES == ("constant", "cosine")
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        multipliers("linear", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown schedule"):
        warmup_steps("step", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1 step"):
        multipliers("cosine", 0)


def test_warmup_cosine_runs_each_recommended_rate_as_its_peak_and_follows_apply() -> None:
    from lrprobe import warmup_cosine
    from lrprobe.worker.newton import losses, minibatches, probe

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = torch.randn(128, 6)
    y = x[:, :3].argmax(1)
    batches = minibatches(x, y, batch_size=16, seed=0)
    result = probe(model, losses.cross_entropy, batches, steps=8, period=2, calibration_steps=4)
    optimizer = torch.optim.SGD(result.param_groups(model))
    steps = 40
    scheduler = warmup_cosine(optimizer, steps)
    shape = multipliers("cosine", steps)
    seen = []
    for _ in range(steps + 2):  # past the end the last step's rate stays
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    peaks = [g.lr for g in result.groups]
    expected = [[peak * m for peak in peaks] for m in [*shape, shape[-1], shape[-1]]]
    assert seen == [pytest.approx(row) for row in expected]
    # New rates put in (a re-probe's: here twice the first) become the schedule's peaks: the
    # current multiplier applies at once and on every later step.
    doubled = replace(result, groups=[replace(g, lr=2 * g.lr) for g in result.groups])
    doubled.apply(optimizer, model, schedulers=[scheduler])
    for _ in range(2):
        assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(
            [2 * peak * shape[-1] for peak in peaks]
        )
        optimizer.step()
        scheduler.step()
    assert scheduler.base_lrs == pytest.approx([2 * peak for peak in peaks])
