"""Which optimizers get gn-probe/0.7's longer λ₁ contest, held once for the worker's probe and
the dashboard that tells the user how long each calibration run is."""

from __future__ import annotations

from collections.abc import Iterable

# With heavy-ball momentum each λ₁ calibration run is this many times ``calibration_steps``
# long: the instability a large λ₁ breeds under momentum builds over more than 40 steps
# (why, and the figures: lrprobe.worker.newton.trajectory's docstring).
MOMENTUM_CALIBRATION_FACTOR = 2


def heavy_ball(name: str, momentum: float, group_momenta: Iterable[float | None] = ()) -> bool:
    """Whether any parameter trains with a heavy-ball momentum buffer: the "momentum" optimizer
    with β > 0, or with a parameter group that sets its own β > 0 (``None``: the optimizer's).
    Plain "sgd" never does, whatever its momentum field holds (a job stored before the schema's
    0.9 default became 'momentum'-only may hold 0.9; the direction rule ignores it for "sgd")."""
    if name != "momentum":
        return False
    return momentum > 0 or any(m is not None and m > 0 for m in group_momenta)
