"""The plateau note: the calibration runs barely lowered the loss, so the rates may not last."""

from __future__ import annotations

import math

import torch
from torch import nn

from lrprobe.worker.newton import losses, minibatches, probe
from lrprobe.worker.newton.result import ScaleCheck
from lrprobe.worker.newton.trajectory import PLATEAU_DROP, _plateau_note


def _checks(*drops: float) -> list[ScaleCheck]:
    return [ScaleCheck(0.1 * (i + 1), math.nan, -d) for i, d in enumerate(drops)]


def test_a_best_drop_below_the_share_of_the_starting_loss_is_a_plateau() -> None:
    start = 2.3
    below, above = 0.9 * PLATEAU_DROP * start, 1.1 * PLATEAU_DROP * start
    note = _plateau_note(_checks(0.001, below), [start, 2.2])
    assert note is not None and f"{below / start:.1%}" in note and "(a plateau)" in note
    assert _plateau_note(_checks(0.001, above), [start]) is None


def test_no_note_where_no_run_lowered_the_loss_or_nothing_was_scored() -> None:
    """calibrate_scale's own note covers a contest that nothing won."""
    assert _plateau_note(_checks(-0.5, -0.1), [2.3]) is None
    assert _plateau_note([ScaleCheck(0.1, math.nan, math.inf)], [2.3]) is None
    assert _plateau_note(_checks(0.01), []) is None


def _probe(**kwargs):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 10, generator=generator)
    y = (x @ torch.randn(10, 4, generator=generator)).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 4))
    batches = minibatches(x, y, batch_size=32, seed=1)
    return probe(model, losses.cross_entropy, batches, steps=8, period=2, calibration_steps=8,
                 **kwargs)  # fmt: skip


def test_the_probe_says_so_when_its_calibration_runs_barely_move_the_loss() -> None:
    """Candidates far too small to move the loss, then the default ones on the same task."""
    tiny = _probe(calibrate=(1e-5,))
    assert any("(a plateau)" in n for n in tiny.notes), tiny.notes
    usual = _probe()
    drops = [-c.realised for c in usual.scale_checks]
    assert max(drops) > PLATEAU_DROP * usual.trajectory_losses[0]  # the case moves the loss
    assert not any("(a plateau)" in n for n in usual.notes), usual.notes
