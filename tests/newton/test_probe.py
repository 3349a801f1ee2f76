"""The probe as users call it: untouched models, optimizer directions, results that apply."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import torch
from torch import nn

from lrprobe.worker.newton import (
    NumericalError,
    OptimizerSpec,
    ProbeProgress,
    ProbeResult,
    from_torch,
    losses,
    minibatches,
    partition,
    probe,
)
from lrprobe.worker.newton.directions import DirectionRule


def _data(n: int = 256, features: int = 10, classes: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    w = torch.randn(features, classes, generator=generator)
    return x, (x @ w).argmax(1)


def _split(train: int = 512, heldout: int = 256, seed: int = 0):
    """Training and held-out samples of one task (the held-out ones never reach the probe)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(train + heldout, 10, generator=generator)
    y = (x @ torch.randn(10, 4, generator=generator)).argmax(1)
    return (x[:train], y[:train]), (x[train:], y[train:])


def _trained_heldout_loss(
    result: ProbeResult, train, heldout, steps: int, factor: float = 1.0
) -> float:
    """Train a fresh copy of the probed model with ``torch.optim.SGD`` over
    ``result.param_groups`` (each rate times ``factor``) for ``steps`` steps on batches of 32,
    then measure the loss on ``heldout``: the probe's own bookkeeping plays no part."""
    model = _mlp()
    groups = result.param_groups(model)
    for group in groups:
        group["lr"] *= factor
    optimizer = torch.optim.SGD(groups)
    (x, y), generator = train, torch.Generator().manual_seed(5)
    for _ in range(steps):
        rows = torch.randint(0, len(x), (32,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
        optimizer.step()
    return _heldout_loss(model, heldout)


def _heldout_loss(model: nn.Module, heldout) -> float:
    with torch.no_grad():
        return nn.functional.cross_entropy(model(heldout[0]), heldout[1]).item()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)
    )


class BatchNormDropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _quick(model: nn.Module, x, y, **kwargs) -> ProbeResult:
    """A short probe: 8 trajectory steps (4 evaluations) and 3 calibration runs of 4 steps, or
    K = 3 for the fixed-θ method."""
    kwargs = {
        "steps": 8, "period": 2, "calibration_steps": 4, "num_batches": 3, "heldout_batches": 2,
        "bootstrap": 20, **kwargs,
    }  # fmt: skip
    return probe(model, losses.cross_entropy, minibatches(x, y, batch_size=32, seed=1), **kwargs)


def test_probe_leaves_a_batchnorm_dropout_model_bit_for_bit_unchanged() -> None:
    torch.manual_seed(0)
    model = BatchNormDropoutNet().train()
    x, y = torch.randn(128, 1, 4, 4), torch.randint(0, 3, (128,))
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    result = _quick(model, x, y)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert [g.name for g in result.groups] == ["conv", "bn", "head"]
    assert all(math.isfinite(g.lr) and g.lr > 0 for g in result.groups)


def test_probe_is_deterministic_for_a_seed_even_with_dropout() -> None:
    torch.manual_seed(0)
    model = BatchNormDropoutNet().train()
    x, y = torch.randn(128, 1, 4, 4), torch.randint(0, 3, (128,))
    first, second = _quick(model, x, y), _quick(model, x, y)
    assert [g.eta for g in first.groups] == [g.eta for g in second.groups]


def test_recommended_step_decreases_the_held_out_loss() -> None:
    train, heldout = _split()
    result = _quick(_mlp(), *train, method="fixed", num_batches=6)
    chosen = next(c for c in result.scale_checks if c.scale == result.scale)
    assert chosen.realised < 0
    assert chosen.ratio >= 0.5
    # measured apart from the probe: one SGD step with its param_groups lowers the loss on
    # samples it never saw, and by more than the step ten times shorter or longer
    before = _heldout_loss(_mlp(), heldout)
    after = {f: _trained_heldout_loss(result, train, heldout, 1, f) for f in (0.1, 1.0, 10.0)}
    assert after[1.0] < before, (before, after)
    assert after[1.0] < min(after[0.1], after[10.0]), after


def test_training_with_the_recommended_rates_beats_rates_three_times_off() -> None:
    """The trajectory's rates applied as a user would (``param_groups`` into SGD), 20 steps,
    judged by the held-out loss alone: lower than at the start, and lower than with every rate
    three times smaller or three times larger."""
    train, heldout = _split()
    result = _quick(_mlp(), *train)
    before = _heldout_loss(_mlp(), heldout)
    after = {f: _trained_heldout_loss(result, train, heldout, 20, f) for f in (1 / 3, 1.0, 3.0)}
    assert after[1.0] < before, (before, after)
    assert after[1.0] < min(after[1 / 3], after[3.0]), after


def test_single_group_rate_matches_a_single_group_probe() -> None:
    """Coarsening (docs/method.md §1.4): sums of the per-group summaries are the S = 1 problem."""
    x, y = _data()
    layered = _quick(_mlp(), x, y, method="fixed")
    single = _quick(_mlp(), x, y, method="fixed", partition="single")
    assert single.groups[0].eta == pytest.approx(layered.single_group_eta, rel=1e-6)


def test_param_groups_build_an_optimizer_with_the_recommended_rates() -> None:
    x, y = _data()
    model = _mlp()
    result = _quick(model, x, y)
    optimizer = torch.optim.SGD(result.param_groups(model))
    assert [g["lr"] for g in optimizer.param_groups] == [g.lr for g in result.groups]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 6


def test_param_groups_refuse_a_different_model() -> None:
    x, y = _data()
    result = _quick(_mlp(), x, y)
    with pytest.raises(ValueError, match="no parameters named"):
        result.param_groups(nn.Sequential(nn.Linear(10, 4)))


def test_result_round_trips_through_json() -> None:
    x, y = _data()
    result = _quick(_mlp(), x, y)
    data = json.loads(result.to_json())
    assert ProbeResult.from_dict(data).to_dict() == result.to_dict()
    assert set(data["groups"][0]) >= {"name", "lr", "lr_interval", "eta", "flags", "curvature"}


def test_printing_a_result_shows_its_notes_or_says_there_are_none() -> None:
    from dataclasses import replace

    x, y = _data()
    result = _quick(_mlp(), x, y)
    noted = replace(result, notes=["the first note", "the second"])
    assert str(noted).endswith("note: the first note\nnote: the second")
    assert str(noted).startswith(result.table().split("\n")[0])  # the table comes first
    assert str(replace(result, notes=[])).endswith("no notes")


def test_progress_reports_every_trajectory_step_up_to_the_total() -> None:
    x, y = _data()
    events: list[ProbeProgress] = []
    # (No extension of the contest: its own test counts that run.)
    _quick(_mlp(), x, y, progress=events.append, extend_edge=None)
    assert [e.done for e in events] == list(range(1, 8 + 3 * 4 + 1))
    assert {e.total for e in events} == {20}
    assert [e.phase for e in events] == ["trajectory"] * 8 + ["calibration"] * 12


def test_fixed_probe_progress_reports_every_batch_up_to_the_total() -> None:
    x, y = _data()
    events: list[ProbeProgress] = []
    _quick(_mlp(), x, y, method="fixed", progress=events.append)
    assert [e.done for e in events] == list(range(1, 6))
    assert {e.total for e in events} == {5}


def test_too_few_batches_is_a_clear_error() -> None:
    x, y = _data()
    batches = [(x[:32], y[:32])] * 5
    with pytest.raises(ValueError, match="needs 16 batches"):
        probe(_mlp(), losses.cross_entropy, batches, steps=8, period=2, calibration_steps=4)
    with pytest.raises(ValueError, match="needs 10 batches"):
        probe(
            _mlp(), losses.cross_entropy, batches, method="fixed", num_batches=3, heldout_batches=2
        )


def test_unknown_method_is_a_clear_error() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="unknown method"):
        _quick(_mlp(), x, y, method="oracle")


def test_unused_layer_is_flagged_not_fatal() -> None:
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(10, 4)
            self.spare = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    x, y = _data()
    result = _quick(WithSpare(), x, y)
    spare = next(g for g in result.groups if g.name == "spare")
    assert "unused" in spare.flags and spare.eta == 0


def test_non_finite_loss_is_a_numerical_error_with_a_code() -> None:
    model = _mlp()
    with torch.no_grad():
        model[0].weight.fill_(math.nan)
    x, y = _data()
    with pytest.raises(NumericalError) as info:
        _quick(model, x, y)
    assert info.value.code == "non_finite_loss"


def _trained(optimizer_cls, hyper: dict, batch) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = _mlp().double()
    optimizer = optimizer_cls(model.parameters(), lr=1e-2, **hyper)
    for _ in range(3):  # build real optimizer state
        optimizer.zero_grad()
        losses.cross_entropy(model, batch).backward()
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize(
    ("optimizer_cls", "hyper"),
    [
        (torch.optim.SGD, {}),
        (torch.optim.SGD, {"momentum": 0.9}),
        (torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
        (torch.optim.Adam, {"weight_decay": 1e-2}),
        (torch.optim.AdamW, {"weight_decay": 1e-1}),
    ],
)
def test_direction_is_the_step_torch_would_take_at_lr_one(optimizer_cls, hyper) -> None:
    x, y = _data()
    batch = (x.double(), y)
    model, optimizer = _trained(optimizer_cls, hyper, batch)
    spec, state = from_torch(optimizer, model)
    names = [n for n, _ in model.named_parameters()]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rule = DirectionRule(spec, copy.deepcopy(state), names)  # read before torch mutates it

    optimizer.zero_grad()
    losses.cross_entropy(model, batch).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    u = rule.direction(grads, dict(model.named_parameters()))
    for group in optimizer.param_groups:
        group["lr"] = 1.0
    optimizer.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(u[n], before[n] - p.detach(), rtol=1e-9, atol=1e-12)


def test_momentum_without_a_buffer_converts_eta_with_one_minus_beta() -> None:
    x, y = _data()
    spec = OptimizerSpec("momentum", momentum=0.9)
    result = _quick(_mlp(), x, y, method="fixed", optimizer=spec)
    assert result.lr_factor == pytest.approx(0.1)
    for g in result.groups:
        if "fallback_global" not in g.flags:
            assert g.lr == pytest.approx(result.scale * 0.1 * g.eta)


def test_adam_without_state_estimates_the_second_moment_first() -> None:
    x, y = _data()
    events: list[ProbeProgress] = []
    result = _quick(_mlp(), x, y, method="fixed", optimizer="adam", progress=events.append)
    assert events[0].phase == "second_moment"
    assert "no saved state" in result.direction
    assert all(g.lr > 0 for g in result.groups)


def test_a_live_optimizer_supplies_its_state() -> None:
    x, y = _data()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for xb, yb in zip(x.split(32), y.split(32), strict=True):
        optimizer.zero_grad()
        losses.cross_entropy(model, (xb, yb)).backward()
        optimizer.step()
    result = _quick(model, x, y, method="fixed", optimizer=optimizer)
    assert result.direction == "momentum buffer"
    assert result.lr_factor == 1.0


def test_partition_rule_and_max_groups_reach_the_result() -> None:
    x, y = _data()
    result = _quick(_mlp(), x, y, partition="tensor", max_groups=2)
    assert len(result.groups) == 2
    assert result.groups[0].param_names == tuple(
        n for g in partition(_mlp(), "tensor", max_groups=2)[:1] for n in g.param_names
    )


def test_trajectory_rates_multiply_the_optimizers_own_step() -> None:
    """The trajectory steps with torch's momentum buffer, so no 1 − β conversion applies."""
    x, y = _data()
    result = _quick(_mlp(), x, y, optimizer="momentum")
    assert result.method == "trajectory" and result.lr_factor == 1.0
    for g in result.groups:
        if "fallback_global" not in g.flags:
            assert g.lr == pytest.approx(result.scale * g.eta)


def test_trajectory_never_recommends_a_zero_rate_for_a_used_group() -> None:
    x, y = _data()
    for bounds in (None, 10.0):
        result = _quick(_mlp(), x, y, bounds=bounds)
        assert all(g.lr > 0 for g in result.groups)


@pytest.mark.parametrize("method", ["trajectory", "fixed"])
def test_each_recommended_rate_lies_within_its_own_interval(method: str) -> None:
    """An even number of tail evaluations once put the median below its own 10 % quantile."""
    x, y = _data()
    result = _quick(_mlp(), x, y, method=method, steps=16, period=4)
    for g in result.groups:
        lo, hi = g.lr_interval
        assert lo * (1 - 1e-12) <= g.lr <= hi * (1 + 1e-12), g.name
    lo, hi = result.single_group_interval
    assert lo * (1 - 1e-12) <= result.single_group_lr <= hi * (1 + 1e-12)


def test_a_diverging_trajectory_is_run_again_with_smaller_rates() -> None:
    """The README's digits MLP at seed 0: at 0.3·η the tanh layers saturate and the loss grows
    (finite) into the millions; the probe must notice and not recommend such rates."""
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    x = torch.tensor(features / 16.0, dtype=torch.float32)
    y = torch.tensor(labels)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 10)
    )
    result = probe(model, losses.cross_entropy, minibatches(x, y, batch_size=128))
    assert any("run again with rates 10× smaller" in note for note in result.notes)
    assert all(1e-3 < g.lr < 10 for g in result.groups)
    assert max(result.trajectory_losses) < 10 * result.trajectory_losses[0]


def test_bounds_keep_each_group_near_the_single_group_rate() -> None:
    x, y = _data()
    result = _quick(_mlp(), x, y, bounds=2.0, steps=4, period=4)
    single = result.single_group_eta
    for g in result.groups:
        assert single / 2 * (1 - 1e-9) <= g.eta <= single * 2 * (1 + 1e-9)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_class_optimizers_take_adam_bounds_instead(optimizer: str) -> None:
    x, y = _data()
    result = _quick(_mlp(), x, y, optimizer=optimizer, bounds=100.0, adam_bounds=2.0, steps=4,
                    period=4)  # fmt: skip
    single = result.single_group_eta
    for g in result.groups:
        assert single / 2 * (1 - 1e-9) <= g.eta <= single * 2 * (1 + 1e-9)
    # The same run as bounds=2 for every optimizer, to the bit.
    same = _quick(_mlp(), x, y, optimizer=optimizer, bounds=2.0, adam_bounds=None, steps=4,
                  period=4)  # fmt: skip
    assert [g.lr for g in same.groups] == [g.lr for g in result.groups]


def test_adam_bounds_leave_other_optimizers_alone() -> None:
    x, y = _data()
    loose = _quick(_mlp(), x, y, optimizer="momentum", bounds=100.0, adam_bounds=1.0)
    plain = _quick(_mlp(), x, y, optimizer="momentum", bounds=100.0, adam_bounds=None)
    assert [g.lr for g in loose.groups] == [g.lr for g in plain.groups]
    assert len({round(g.eta / loose.single_group_eta, 6) for g in loose.groups}) > 1


def test_bounds_below_one_are_refused() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="at least 1"):
        _quick(_mlp(), x, y, adam_bounds=0.5)


def test_calibration_picks_the_candidate_with_the_lowest_loss_after_a_short_run() -> None:
    x, y = _data()
    result = _quick(_mlp(), x, y, calibrate=(0.1, 0.3, 1.0), calibration_steps=6)
    assert [c.scale for c in result.scale_checks] == [0.1, 0.3, 1.0]
    best = min(result.scale_checks, key=lambda c: c.realised)
    assert result.scale == best.scale
    for g in result.groups:
        if "fallback_global" not in g.flags:
            assert g.lr == pytest.approx(result.scale * g.eta)
    assert result.single_group_lr == pytest.approx(result.scale * result.single_group_eta)
    assert ProbeResult.from_dict(json.loads(result.to_json())).to_dict() == result.to_dict()


def test_the_calibrated_scale_is_the_best_candidate_on_held_out_data() -> None:
    """The candidates re-run apart from the probe: each scale's rates (the recommendation
    rescaled) train a fresh model for 20 steps, and the probe's choice ends lowest on samples
    the probe never saw."""
    train, heldout = _split()
    candidates = (0.1, 0.3, 1.0)
    result = _quick(_mlp(), *train, calibrate=candidates, calibration_steps=6)
    measured = {
        c: _trained_heldout_loss(result, train, heldout, 20, c / result.scale) for c in candidates
    }
    assert min(measured, key=measured.__getitem__) == result.scale, (result.scale, measured)


def test_a_live_optimizer_state_is_continued_not_reset() -> None:
    x, y = _data()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for xb, yb in zip(x.split(32), y.split(32), strict=True):
        optimizer.zero_grad()
        losses.cross_entropy(model, (xb, yb)).backward()
        optimizer.step()
    buffers = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    result = _quick(model, x, y, optimizer=optimizer)
    assert result.method == "trajectory" and all(g.lr > 0 for g in result.groups)
    after = [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(buffers, after, strict=True))


@pytest.mark.gpu
def test_probe_runs_on_cuda_and_leaves_the_model_there() -> None:
    x, y = _data()
    model = BatchNormDropoutNet().cuda()
    x, y = torch.randn(128, 1, 4, 4, device="cuda"), torch.randint(0, 3, (128,), device="cuda")
    state = copy.deepcopy(model.state_dict())
    result = _quick(model, x, y)
    assert result.cost.device.startswith("cuda")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method", ["trajectory", "fixed"])
def test_notes_name_every_raised_flag_and_no_other(method: str) -> None:
    """Flags and notes agree: a flag raised on any group has its sentence in the notes, naming
    those groups, and a flag raised nowhere has none (so "no notes" means nothing flagged)."""
    from lrprobe.worker.newton.result import FLAG_MEANINGS

    class WithSpare(nn.Module):  # the spare layer raises "unused" at least
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp()
            self.spare = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    x, y = _data(n=64)
    seen: set[str] = set()
    for seed in range(3):
        result = _quick(WithSpare(), x, y, method=method, seed=seed, bounds=None)
        for flag, meaning in FLAG_MEANINGS.items():
            flagged = [g.name for g in result.groups if flag in g.flags]
            notes = [n for n in result.notes if n.startswith(f"{flag} (")]
            if flagged:
                seen.add(flag)
                assert len(notes) == 1 and meaning in notes[0]
                assert all(name in notes[0] for name in flagged)
            else:
                assert not notes
    assert "unused" in seen


def test_low_snr_compares_the_mean_slope_with_its_standard_error() -> None:
    from lrprobe.worker.newton.report import _low_snr

    # One batch's slope spread 1.0 around a mean of 0.5: alone, noise; averaged over 40
    # evaluations the mean is 3.2 standard errors from zero.
    assert _low_snr(0.5, 1.0, 4) and not _low_snr(0.5, 1.0, 40)
    assert not _low_snr(0.5, 0.0, 4) and not _low_snr(0.5, 1.0, 1)


def test_shrink_one_gives_every_group_the_single_group_rate() -> None:
    x, y = _data()
    result = _quick(_mlp(), x, y, shrink=1.0, calibrate=())
    for g in result.groups:
        assert g.eta == pytest.approx(result.single_group_eta, rel=1e-9)
        assert g.lr == pytest.approx(result.single_group_lr, rel=1e-9)
    with pytest.raises(ValueError, match="shrink"):
        _quick(_mlp(), x, y, shrink=1.5)


def test_shrink_moves_each_rate_toward_the_single_group_rate() -> None:
    x, y = _data()
    plain = _quick(_mlp(), x, y, shrink=0.0, calibrate=())
    half = _quick(_mlp(), x, y, shrink=0.5, calibrate=())
    single = plain.single_group_eta
    for a, b in zip(plain.groups, half.groups, strict=True):
        assert abs(math.log(b.eta / single)) <= abs(math.log(a.eta / single)) + 1e-9, a.name


def test_a_wide_spread_of_per_layer_rates_is_noted_with_the_single_group_rate() -> None:
    from dataclasses import replace

    from lrprobe.worker.newton.trajectory import WIDE_SPREAD, _spread_note

    x, y = _data()
    groups = _quick(_mlp(), x, y).groups
    narrow = [replace(g, lr=1.0 + i) for i, g in enumerate(groups)]
    assert _spread_note(narrow, 0.5) is None
    wide = [replace(groups[0], lr=1.0), *(replace(g, lr=2 * WIDE_SPREAD) for g in groups[1:])]
    note = _spread_note(wide, 0.5)
    assert note is not None and "60×" in note and "0.5" in note
    # an unused group's rate says nothing about the others
    unused = [replace(wide[0], flags=("unused",)), *wide[1:]]
    assert _spread_note(unused, 0.5) is None


def _calibration_batches(x, y, result: ProbeResult, steps: int, period: int, count: int):
    """The batches the calibration runs trained on: those after the trajectory's steps and its
    summary batches in the probe's stream (``_quick`` draws them with seed 1)."""
    stream = minibatches(x, y, batch_size=32, seed=1)
    drawn = [next(stream) for _ in range(steps + -(-steps // period) + count)]
    return drawn[steps + -(-steps // period) :]


def _at_candidate(result: ProbeResult, scale: float) -> tuple[nn.Module, torch.optim.SGD]:
    """A fresh copy of the probed model and torch's SGD at a calibration candidate's rates
    (``scale · η`` per group), apart from the probe's own code."""
    model = _mlp()
    groups = result.param_groups(model)
    for group, g in zip(groups, result.groups, strict=True):
        group["lr"] = scale * g.eta
    return model, torch.optim.SGD(groups)


def test_with_validation_batches_each_candidate_scores_their_change_in_loss() -> None:
    """Re-done apart from the probe: for each candidate, torch's SGD over the candidate's rates
    on the calibration batches from the checkpoint, then the loss on the validation batches."""
    (x, y), heldout = _split()
    validation = [(heldout[0][:128], heldout[1][:128]), (heldout[0][128:], heldout[1][128:])]
    candidates = (0.1, 0.3, 1.0)
    result = _quick(_mlp(), x, y, calibrate=candidates, validation=validation)

    def validation_loss(model: nn.Module) -> float:
        return sum(_heldout_loss(model, batch) for batch in validation) / len(validation)

    before = validation_loss(_mlp())
    assert not any("fallback_global" in g.flags for g in result.groups)
    for check in result.scale_checks:
        model, optimizer = _at_candidate(result, check.scale)
        for batch in _calibration_batches(x, y, result, steps=8, period=2, count=4):
            optimizer.zero_grad()
            losses.cross_entropy(model, batch).backward()
            optimizer.step()
        assert check.realised == pytest.approx(validation_loss(model) - before, rel=1e-5, abs=1e-7)
    # Each validation batch is one forward pass at the checkpoint and one after each run.
    assert result.cost.passes["forward"] == len(validation) * (1 + len(candidates))


def test_validation_batches_that_training_makes_worse_pick_the_smallest_candidate() -> None:
    (x, y), heldout = _split()
    shuffled = heldout[1][
        torch.randperm(len(heldout[1]), generator=torch.Generator().manual_seed(3))
    ]
    candidates = (0.1, 0.3, 1.0)

    on_training_loss = _quick(_mlp(), x, y, calibrate=candidates)
    on_noise = _quick(_mlp(), x, y, calibrate=candidates, validation=[(heldout[0], shuffled)])

    assert on_training_loss.scale > 0.1  # the control: on the training loss a larger λ₁ wins
    # Labels that have nothing to do with the inputs: the further a run fits the training
    # data, the worse they fare.
    realised = [c.realised for c in on_noise.scale_checks]
    assert realised == sorted(realised), realised
    assert on_noise.scale == 0.1


def test_validation_batches_are_refused_by_the_fixed_method() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="trajectory"):
        _quick(_mlp(), x, y, method="fixed", validation=[(x[:32], y[:32])])


def test_the_no_progress_note_names_the_loss_the_candidates_were_scored_on() -> None:
    from lrprobe.worker.newton.trajectory import CalibrationRun, calibrate_scale

    def worse_on_validation(rates: list[float]) -> CalibrationRun:
        return CalibrationRun(
            losses=[1.0, 0.5], validation=2.0
        )  # training improves, validation not

    on_validation = calibrate_scale(worse_on_validation, [1.0], (0.1, 0.3), 2, 1.0)
    on_training = calibrate_scale(worse_on_validation, [1.0], (0.1, 0.3), 2, None)

    assert on_validation[0] == 0.1 and "lowered the validation loss" in (on_validation[2] or "")
    assert on_training[2] is None  # the training loss fell: no note


def _falling_by(drop: dict[float, float], start: float = 1.0):
    """A calibration run whose loss falls from ``start`` by ``drop[λ₁]`` (read off the first
    rate, as rates = [1.0]); the candidates it was called with are recorded."""
    from lrprobe.worker.newton.trajectory import CalibrationRun

    called: list[float] = []

    def run(rates: list[float]) -> CalibrationRun:
        scale = round(rates[0], 6)
        called.append(scale)
        return CalibrationRun(losses=[start, start - drop[scale]])

    return run, called


def test_a_steep_edge_runs_one_more_candidate_past_the_largest() -> None:
    from lrprobe.worker.newton.trajectory import calibrate_scale

    run, called = _falling_by({0.1: 0.2, 0.3: 0.5, 0.9: 0.6})
    extended: list[bool] = []
    scale, checks, note = calibrate_scale(
        run, [1.0], (0.1, 0.3), 2, extend_edge=1.3, on_extend=lambda: extended.append(True)
    )
    assert called == [0.1, 0.3, 0.9] and extended == [True]
    assert scale == pytest.approx(0.9) and note is None
    assert [c.scale for c in checks] == pytest.approx([0.1, 0.3, 0.9])


def test_the_extension_wins_only_if_it_scores_lower() -> None:
    from lrprobe.worker.newton.trajectory import calibrate_scale

    run, called = _falling_by({0.1: 0.2, 0.3: 0.5, 0.9: 0.4})
    scale, _, _ = calibrate_scale(run, [1.0], (0.1, 0.3), 2, extend_edge=1.0)
    assert called == [0.1, 0.3, 0.9] and scale == 0.3


@pytest.mark.parametrize(
    "drop",
    [
        {0.1: 0.5, 0.3: 0.55},  # the edge won, but the loss barely fell more there: flat
        {0.1: 0.5, 0.3: 0.2},  # the edge lost
        {0.1: -0.1, 0.3: -0.2},  # no candidate lowered the loss
        {0.1: 0.01, 0.3: 0.05},  # a plateau: the loss fell by 5 % of its start at most
    ],
)
def test_no_extension_unless_the_edge_wins_steeply(drop: dict[float, float]) -> None:
    from lrprobe.worker.newton.trajectory import calibrate_scale

    run, called = _falling_by(drop)
    calibrate_scale(run, [1.0], (0.1, 0.3), 2, extend_edge=1.3, extend_min_drop=0.1)
    assert called == [0.1, 0.3]
    run, called = _falling_by(drop)
    calibrate_scale(run, [1.0], (0.1, 0.3), 2)  # extend_edge=None: never
    assert called == [0.1, 0.3]


def _calibration_steps(model: nn.Module, optimizer: Any, **kwargs: Any) -> int:
    """How many calibration steps a short probe's contest ran (no extension), from its progress
    reports; also checks that the progress total counted exactly those."""
    x, y = _data()
    events: list[ProbeProgress] = []
    _quick(model, x, y, optimizer=optimizer, extend_edge=None, progress=events.append, **kwargs)
    ran = sum(e.phase == "calibration" for e in events)
    assert {e.total for e in events} == {8 + ran}
    return ran


def test_an_extended_contest_counts_its_run_in_progress_and_cost() -> None:
    x, y = _data()
    events: list[ProbeProgress] = []
    # Candidates far too small for this task: the largest wins and the loss is still falling.
    # (No tolerance: at such rates the 4-step drops differ by less than 5 %.)
    small = (0.001, 0.003)
    plain = _quick(_mlp(), x, y, calibrate=small, extend_edge=None, calibration_tolerance=0.0)
    extended = _quick(
        _mlp(), x, y, calibrate=small, extend_edge=1.0, extend_min_drop=0.0,
        calibration_tolerance=0.0, progress=events.append,
    )  # fmt: skip

    assert [c.scale for c in extended.scale_checks] == pytest.approx([0.001, 0.003, 0.009])
    assert [e.done for e in events] == list(range(1, 8 + 3 * 4 + 1))
    # The total grows by the extra run when the contest decides to run it, and is reached.
    assert [e.total for e in events] == [16] * 16 + [20] * 4
    runs = extended.cost.passes["forward_backward"] - plain.cost.passes["forward_backward"]
    assert runs == 4  # one more 4-step calibration run


@pytest.mark.parametrize(("start", "extends"), [(1.0, True), (10.0, False)])
def test_the_plateau_threshold_is_a_share_of_the_starting_loss(start: float, extends: bool) -> None:
    from lrprobe.worker.newton.trajectory import calibrate_scale

    # The same drops: 12 % of a start of 1 (extended), 1.2 % of a start of 10 (a plateau).
    run, called = _falling_by({0.1: 0.05, 0.3: 0.12, 0.9: 0.2}, start)
    calibrate_scale(run, [1.0], (0.1, 0.3), 2, extend_edge=1.3, extend_min_drop=0.1)
    assert called == ([0.1, 0.3, 0.9] if extends else [0.1, 0.3])


def test_the_extension_skips_heavy_ball_momentum_unless_asked() -> None:
    x, y = _data()
    # Candidates far too small for this task: without momentum the edge would be extended.
    kwargs = {
        "calibrate": (0.001, 0.003), "extend_edge": 1.0, "extend_min_drop": 0.0,
        "calibration_tolerance": 0.0,
    }  # fmt: skip
    plain = _quick(_mlp(), x, y, optimizer="momentum", **kwargs)
    asked = _quick(_mlp(), x, y, optimizer="momentum", extend_momentum=True, **kwargs)
    assert [c.scale for c in plain.scale_checks] == [0.001, 0.003]
    assert [c.scale for c in asked.scale_checks] == pytest.approx([0.001, 0.003, 0.009])


@pytest.mark.parametrize(
    ("drop", "tolerance", "chosen"),
    [
        ({0.1: 0.48, 0.3: 0.5}, 0.05, 0.1),  # 4 % less drop: a near-tie, the smaller wins
        ({0.1: 0.45, 0.3: 0.5}, 0.05, 0.3),  # 10 % less: the larger's gain is real
        ({0.1: 0.48, 0.3: 0.5}, 0.0, 0.3),  # no tolerance: the lowest loss wins
        ({0.03: 0.49, 0.1: 0.5, 0.3: 0.48}, 0.05, 0.03),  # the smallest of all within it
    ],
)
def test_the_smallest_candidate_within_the_tolerance_of_the_best_drop_wins(
    drop: dict[float, float], tolerance: float, chosen: float
) -> None:
    from lrprobe.worker.newton.trajectory import calibrate_scale

    run, _ = _falling_by(drop)
    scale, checks, note = calibrate_scale(run, [1.0], tuple(drop), 2, tolerance=tolerance)
    assert scale == chosen and note is None
    assert [c.scale for c in checks] == list(drop)  # every candidate is still reported


def test_a_tolerance_never_picks_a_run_that_did_not_lower_the_loss() -> None:
    from lrprobe.worker.newton.trajectory import calibrate_scale

    # The smaller candidate raised the loss by more than the tolerance's margin (0.5 × 0.5).
    run, _ = _falling_by({0.1: -0.4, 0.3: 0.5})
    scale, _, _ = calibrate_scale(run, [1.0], (0.1, 0.3), 2, tolerance=0.5)
    assert scale == 0.3


@pytest.mark.parametrize(
    ("optimizer", "factor", "length"), [("momentum", 2, 8), ("momentum", 1, 4), ("sgd", 2, 4)]
)
def test_heavy_ball_runs_each_calibration_run_momentum_calibration_factor_times_longer(
    optimizer: str, factor: int, length: int
) -> None:
    ran = _calibration_steps(_mlp(), optimizer, momentum_calibration_factor=factor)
    assert ran == 3 * length  # three candidates, calibration_steps=4 each


@pytest.mark.parametrize(
    "setting",
    [
        {"extend_edge": 0.5},
        {"extend_min_drop": 1.0},
        {"calibration_tolerance": 1.0},
        {"momentum_calibration_factor": 0},
        {"momentum_calibration_factor": 1.5},
    ],
)
def test_contest_settings_out_of_range_are_refused(setting: dict[str, float]) -> None:
    x, y = _data()
    with pytest.raises(ValueError, match=next(iter(setting))):
        _quick(_mlp(), x, y, **setting)


def test_plain_sgd_is_not_heavy_ball_whatever_its_momentum_field_holds() -> None:
    from lrprobe.worker.newton import OptimizerSpec

    # As a job builds it: the schema's momentum default (0.9) rides along with "sgd".
    as_a_job = OptimizerSpec("sgd", momentum=0.9)
    assert _calibration_steps(_mlp(), as_a_job) == 3 * 4  # the plain contest


def test_the_edge_is_extended_only_when_the_tolerance_rule_picks_it() -> None:
    from lrprobe.worker.newton.trajectory import calibrate_scale

    # 0.3 has the lowest loss and a steep edge, but 0.03 comes within 5 % of its drop: 0.03 wins,
    # and the contest is not extended past a candidate it did not choose.
    run, called = _falling_by({0.03: 0.49, 0.1: 0.3, 0.3: 0.5, 0.9: 0.7})
    scale, _, _ = calibrate_scale(
        run, [1.0], (0.03, 0.1, 0.3), 2, extend_edge=1.3, extend_min_drop=0.1, tolerance=0.05
    )
    assert (scale, called) == (0.03, [0.03, 0.1, 0.3])
    # An extension run within the tolerance of the edge's drop does not displace it.
    run, called = _falling_by({0.1: 0.2, 0.3: 0.5, 0.9: 0.51})
    scale, _, _ = calibrate_scale(run, [1.0], (0.1, 0.3), 2, extend_edge=1.3, tolerance=0.05)
    assert called == [0.1, 0.3, 0.9] and scale == 0.3


def test_the_tolerance_reaches_the_contest_through_probe() -> None:
    x, y = _data()
    # Candidates far apart: the largest lowers the loss most, the smallest by a little.
    kwargs = {"calibrate": (0.001, 0.3), "extend_edge": None}
    strict = _quick(_mlp(), x, y, calibration_tolerance=0.0, **kwargs)
    loose = _quick(_mlp(), x, y, calibration_tolerance=0.999, **kwargs)
    small, large = (c.realised for c in strict.scale_checks)
    assert large < small < 0  # the premise: both lowered the loss, the larger rate more
    assert (strict.scale, loose.scale) == (0.3, 0.001)


def test_a_parameter_group_s_own_momentum_makes_the_contest_heavy_ball() -> None:
    from lrprobe.worker.newton import OptimizerSpec
    from lrprobe.worker.newton.directions import ParamGroupSpec

    model = _mlp()
    first = next(name for name, _ in model.named_parameters())
    spec = OptimizerSpec(
        "momentum", momentum=0.0, param_groups=(ParamGroupSpec((first,), {"momentum": 0.9}),)
    )
    assert _calibration_steps(model, spec) == 3 * 8  # twice calibration_steps=4


def test_under_a_calibration_schedule_each_candidate_trains_at_its_rates_times_it() -> None:
    """Re-done apart from the probe: for each candidate, torch's SGD at the candidate's peak
    rates under LambdaLR with the schedule over the run's 40 steps, on the calibration batches
    from the checkpoint; the score is the mean loss of the last quarter minus the first."""
    from lrprobe.worker.newton.schedules import multipliers

    (x, y), _ = _split()
    candidates, steps = (0.1, 0.3, 1.0), 40
    result = _quick(
        _mlp(), x, y, calibrate=candidates, calibration_steps=steps, calibration_schedule="cosine"
    )
    constant = _quick(_mlp(), x, y, calibrate=candidates, calibration_steps=steps)
    shape = multipliers("cosine", steps)
    assert shape[0] < 1 and shape[-1] < 0.1  # the run warms up and decays
    for check in result.scale_checks:
        model, optimizer = _at_candidate(result, check.scale)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: shape[min(k, steps - 1)])
        seen = []
        for batch in _calibration_batches(x, y, result, steps=8, period=2, count=steps):
            optimizer.zero_grad()
            loss = losses.cross_entropy(model, batch)
            seen.append(float(loss.detach()))
            loss.backward()
            optimizer.step()
            scheduler.step()
        expected = sum(seen[-10:]) / 10 - seen[0]
        assert check.realised == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # The trajectory is the schedule's business only through the contest.
    assert [g.eta for g in result.groups] == [g.eta for g in constant.groups]
    assert [c.realised for c in result.scale_checks] != [c.realised for c in constant.scale_checks]


def test_a_calibration_schedule_is_refused_by_the_fixed_method_and_must_be_known() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="calibration_schedule applies to method='trajectory'"):
        _quick(_mlp(), x, y, method="fixed", calibration_schedule="cosine")
    with pytest.raises(ValueError, match="calibration_schedule must be one of constant, cosine"):
        _quick(_mlp(), x, y, calibration_schedule="linear")
