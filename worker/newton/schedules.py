"""The learning-rate schedules a recommendation can be the peak rate of.

A schedule is a multiplier of the peak rate at each step. ``"constant"`` keeps the peak
throughout; ``"cosine"`` warms up linearly over the first :data:`WARMUP_SHARE` of the steps
and then follows half a cosine down towards 0, the schedule most training recipes use
(:func:`warmup_cosine` builds it as a torch scheduler).

On the quality benchmark the probe's rates, chosen by a contest at constant rates, are the
better peak of that schedule than rates chosen under it (``probe(calibration_schedule=
"cosine")`` runs each candidate under the schedule compressed to the contest's length) or
larger ones (the README's quality section has the figures).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

__all__ = ["SCHEDULES", "WARMUP_SHARE", "Schedule", "multipliers", "warmup_cosine", "warmup_steps"]

Schedule = Literal["constant", "cosine"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
# A twentieth of the run, at least one step: 15 steps of 300, 2 of a 40-step contest.
WARMUP_SHARE = 0.05


def multipliers(schedule: Schedule, steps: int) -> list[float]:
    """The multiplier of the peak rate at each of ``steps`` optimizer steps (the first is
    step 0). ``"cosine"``: ``(k + 1) / w`` for the ``w`` warm-up steps, then
    ``(1 + cos(π (k − w) / (steps − w))) / 2``, which starts at 1 (the peak holds for two
    steps) and, over more than a few steps, ends just above 0 (a run of 1 or 2 steps never
    decays). ``w`` is :func:`warmup_steps` (Python's ``round``: halves go to even).

    Raises:
        ValueError: an unknown schedule, or fewer than 1 step.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    if steps < 1:
        raise ValueError("a schedule needs at least 1 step")
    warmup = warmup_steps(schedule, steps)
    if schedule == "constant":
        return [1.0] * steps
    if warmup >= steps:
        return [(k + 1) / steps for k in range(steps)]
    decay = steps - warmup
    return [
        (k + 1) / warmup if k < warmup else (1 + math.cos(math.pi * (k - warmup) / decay)) / 2
        for k in range(steps)
    ]


def warmup_steps(schedule: Schedule, steps: int) -> int:
    """How many of ``steps`` steps the schedule's linear warm-up takes (0: none)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    return 0 if schedule == "constant" else max(1, round(WARMUP_SHARE * steps))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``"cosine"`` schedule over ``steps`` optimizer steps as a torch scheduler: each
    group's ``lr`` (the recommended rate, as :meth:`ProbeResult.param_groups` sets it) is its
    peak. Call ``scheduler.step()`` after each ``optimizer.step()``; past ``steps`` the rate
    stays at the last step's. ``result.apply(optimizer, model, schedulers=[scheduler])`` and
    :class:`lrprobe.Reprobe` keep it running when they put new rates in.

    Raises:
        ValueError: fewer than 1 step.
    """
    shape = multipliers("cosine", steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: shape[min(k, steps - 1)])
