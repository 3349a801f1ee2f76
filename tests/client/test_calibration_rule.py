"""The rule that decides which optimizers get the longer λ₁ contest (lrprobe.rules.calibration),
shared by the probe and the dashboard."""

from __future__ import annotations

import pytest

from lrprobe.rules.calibration import heavy_ball


@pytest.mark.parametrize(
    ("name", "momentum", "groups", "expected"),
    [
        ("momentum", 0.9, (), True),
        ("momentum", 0.0, (), False),
        ("momentum", 0.0, (None, 0.9), True),  # one group sets its own β
        ("momentum", 0.9, (0.0,), True),  # the others keep the optimizer's
        ("sgd", 0.9, (), False),  # a job's "sgd" carries the schema's default 0.9: no buffer
        ("rmsprop", 0.9, (), False),  # its momentum is not heavy ball on the gradient
        ("adam", 0.9, (0.9,), False),
    ],
)
def test_heavy_ball_is_the_momentum_optimizer_with_a_positive_beta_somewhere(
    name: str, momentum: float, groups: tuple[float | None, ...], expected: bool
) -> None:
    assert heavy_ball(name, momentum, groups) is expected
