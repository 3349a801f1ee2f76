"""Every optimizer the probe follows takes the step the probe reads off it, group by group, and
the ones whose step is not linear in the learning rate are refused with the reason."""

from __future__ import annotations

import copy

import pytest
import torch
from lion_pytorch import Lion
from torch import nn

from lrprobe.worker.newton import OptimizerSpec, from_torch, losses, minibatches, probe
from lrprobe.worker.newton.directions import DirectionRule, build_optimizer


def _data(n: int = 128, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=generator)
    return x, (x @ torch.randn(10, 4, generator=generator)).argmax(1)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 12), nn.LayerNorm(12),
                         nn.Linear(12, 4))  # fmt: skip


def _decay_groups(model: nn.Module, decay: float = 0.1) -> list[dict]:
    """The Hugging Face / nanoGPT / timm setup: no weight decay on biases and norms."""
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if p.dim() >= 2], "weight_decay": decay},
        {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0},
    ]


CASES = {
    "rmsprop": (
        torch.optim.RMSprop,
        {"alpha": 0.9, "momentum": 0.5, "centered": True, "weight_decay": 1e-2},
    ),
    "adagrad": (
        torch.optim.Adagrad,
        {"lr_decay": 0.1, "weight_decay": 1e-2, "initial_accumulator_value": 0.1},
    ),
    "nadam": (torch.optim.NAdam, {"weight_decay": 1e-2, "decoupled_weight_decay": True}),
    "radam": (torch.optim.RAdam, {"weight_decay": 1e-2}),
    "lion": (Lion, {"weight_decay": 1e-1, "betas": (0.9, 0.99)}),
    "adam_amsgrad": (torch.optim.Adam, {"amsgrad": True, "weight_decay": 1e-2}),
    "adamw_decay_groups": (torch.optim.AdamW, {}),
    "momentum_decay_groups": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
}


def _make(name: str, model: nn.Module) -> torch.optim.Optimizer:
    cls, hyper = CASES[name]
    params = _decay_groups(model) if name.endswith("decay_groups") else model.parameters()
    return cls(params, lr=1e-2, **hyper)


def _trained(name: str, batch, steps: int = 3):
    model = _mlp().double()
    optimizer = _make(name, model)
    for _ in range(steps):  # real optimizer state
        optimizer.zero_grad()
        losses.cross_entropy(model, batch).backward()
        optimizer.step()
    return model, optimizer


def _torch_step(name, model, optimizer, batch, lr: float) -> dict[str, torch.Tensor]:
    """θ_before − θ_after of one real step at ``lr``, on copies (model and optimizer untouched).
    Lion keeps settings that deepcopy drops, so it is copied through its state dict (which
    would cast torch's float32 scalars such as NAdam's ``mu_product``: the others are not)."""
    if name == "lion":
        saved = copy.deepcopy(optimizer.state_dict())
        model = copy.deepcopy(model)
        optimizer = _make(name, model)
        optimizer.load_state_dict(saved)
    else:
        model, optimizer = copy.deepcopy((model, optimizer))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.zero_grad()
    losses.cross_entropy(model, batch).backward()
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return {n: before[n] - p.detach() for n, p in model.named_parameters()}


# Without saved state, Adam's direction uses an estimated second moment and momentum's uses g
# (spec §7.3), not their first real step: those are the formulas' own tests (test_probe.py).
FIRST_STEP_CASES = [n for n in CASES if n not in ("adamw_decay_groups", "momentum_decay_groups")]


@pytest.mark.parametrize(
    ("name", "steps"),
    [(n, 0) for n in FIRST_STEP_CASES] + [(n, 3) for n in CASES],
    ids=[f"{n}-first step" for n in FIRST_STEP_CASES] + [f"{n}-with state" for n in CASES],
)
def test_direction_is_the_real_step_at_lr_one_and_scales_linearly(name: str, steps: int) -> None:
    x, y = _data()
    batch = (x.double(), y)
    model, optimizer = _trained(name, batch, steps)
    spec, state = from_torch(optimizer, model)
    names = [n for n, _ in model.named_parameters()]
    rule = DirectionRule(spec, copy.deepcopy(state), names)
    assert not rule.needs_second_moment and rule.lr_factor == 1.0
    model.zero_grad()
    losses.cross_entropy(model, batch).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    u = rule.direction(grads, dict(model.named_parameters()))

    at_one = _torch_step(name, model, optimizer, batch, 1.0)
    small = _torch_step(name, model, optimizer, batch, 1e-3)
    for n in names:
        torch.testing.assert_close(u[n], at_one[n], rtol=1e-9, atol=1e-12)
        # the probe's premise: the step at lr is lr · u
        torch.testing.assert_close(small[n], 1e-3 * u[n], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_the_trajectory_rebuilds_the_users_optimizer_group_by_group(name: str) -> None:
    """The trajectory trains a copy with an optimizer built from the spec, split by probe group:
    its step at lr = 1 must be the user's own optimizer's."""
    x, y = _data()
    batch = (x.double(), y)
    model, optimizer = _trained(name, batch)
    spec, state = from_torch(optimizer, model)
    work = copy.deepcopy(model)
    params = dict(work.named_parameters())
    layers = [["0.weight", "0.bias"], ["2.weight", "2.bias"], ["3.weight", "3.bias"],
              ["4.weight", "4.bias"]]  # fmt: skip
    rebuilt, owner = build_optimizer(spec, layers, params)
    assert sorted(set(owner)) == [0, 1, 2, 3]
    for n, entries in copy.deepcopy(state).items():
        rebuilt.state[params[n]] = entries
    work.zero_grad()
    losses.cross_entropy(work, batch).backward()
    before = {n: p.detach().clone() for n, p in params.items()}
    for group in rebuilt.param_groups:
        group["lr"] = 1.0
    rebuilt.step()
    expected = _torch_step(name, model, optimizer, batch, 1.0)
    for n, p in params.items():
        torch.testing.assert_close(before[n] - p.detach(), expected[n], rtol=1e-9, atol=1e-12)


def test_decay_groups_become_a_spec_with_one_override() -> None:
    model = _mlp()
    spec, _ = from_torch(torch.optim.AdamW(_decay_groups(model), lr=1e-3), model)
    assert spec.name == "adamw" and spec.weight_decay == 0.1
    (group,) = spec.param_groups
    assert set(group.params) == {n for n, p in model.named_parameters() if p.dim() < 2}
    assert group.overrides == {"weight_decay": 0.0}
    assert spec.for_param("0.bias").weight_decay == 0.0
    assert spec.for_param("0.weight").weight_decay == 0.1


@pytest.mark.parametrize("name", ["rmsprop", "adagrad", "nadam", "radam", "lion"])
def test_each_new_optimizer_probes_by_name(name: str) -> None:
    x, y = _data(256)
    result = probe(
        _mlp(), losses.cross_entropy, minibatches(x, y, batch_size=32, seed=1), optimizer=name,
        steps=8, period=2, calibration_steps=4,
    )  # fmt: skip
    assert result.optimizer["name"] == name
    assert all(g.lr > 0 for g in result.groups)


def test_a_decay_no_decay_adamw_setup_probes_and_applies_keeping_each_groups_decay() -> None:
    x, y = _data(256)
    model = _mlp()
    optimizer = torch.optim.AdamW(_decay_groups(model), lr=1e-3, betas=(0.9, 0.95))
    result = probe(
        model, losses.cross_entropy, minibatches(x, y, batch_size=32, seed=1),
        optimizer=optimizer, steps=8, period=2, calibration_steps=4,
    )  # fmt: skip
    assert result.optimizer["param_groups"][0]["weight_decay"] == 0.0
    result.apply(optimizer, model)
    decay = {id(p): p.dim() >= 2 for p in model.parameters()}
    assert len(optimizer.param_groups) == 2 * len(result.groups) - 1  # LayerNorm has no decay
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for g in result.groups:
        for n in g.param_names:
            group = by_param[id(dict(model.named_parameters())[n])]
            assert group["lr"] == g.lr and group["lrprobe_group"] == g.name
            assert group["weight_decay"] == (0.1 if decay[id(group["params"][0])] else 0.0)
            assert group["betas"] == (0.9, 0.95)
    # a fresh optimizer from the same groups gets the same settings
    fresh = torch.optim.AdamW(result.param_groups(model, base=_decay_groups(model)), lr=1e-3)
    assert [(g["lr"], g["weight_decay"]) for g in fresh.param_groups] == [
        (g["lr"], g["weight_decay"]) for g in optimizer.param_groups
    ]


class _Plain(torch.optim.Optimizer):
    def __init__(self, params) -> None:
        super().__init__(params, {"lr": 0.1})


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: torch.optim.Rprop(p), "step sizes that then grow and shrink"),
        (lambda p: torch.optim.LBFGS(p), "searches along a line"),
        (lambda p: torch.optim.ASGD(p), "not proportional"),
        (lambda p: torch.optim.Adafactor(p), "min(lr, 1/√t)"),
        (lambda p: Lion(p, lr=1e-4, decoupled_weight_decay=True), "divides the decay"),
        (lambda p: torch.optim.Adam(p, maximize=True), "maximize=True"),
        (lambda p: _Plain(p), "linear in the learning rate"),
    ],
)
def test_optimizers_that_are_not_linear_in_lr_are_refused_with_the_reason(make, reason) -> None:
    x, y = _data()
    model = _mlp()
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        probe(model, losses.cross_entropy, minibatches(x, y, batch_size=32), optimizer=make(
            model.parameters()))  # fmt: skip


def test_spec_checks_options_and_groups() -> None:
    with pytest.raises(ValueError, match="takes no option alpha"):
        OptimizerSpec("adam", options={"alpha": 0.9})
    with pytest.raises(ValueError, match="centered of rmsprop must be true or false"):
        OptimizerSpec("rmsprop", options={"centered": 1.0})
    with pytest.raises(ValueError, match="alpha of rmsprop must be a number"):
        OptimizerSpec("rmsprop", param_groups=(_group(["a"], alpha=True),))
    with pytest.raises(ValueError, match="in two parameter groups"):
        OptimizerSpec("sgd", param_groups=(
            _group(["a"], weight_decay=0.0), _group(["a"], weight_decay=0.1)))  # fmt: skip
    with pytest.raises(ValueError, match="weight_decay ≥ 0"):
        OptimizerSpec("adamw", param_groups=(_group(["a"], weight_decay=-1.0),))
    assert OptimizerSpec("lion").betas == (0.9, 0.99)
    assert OptimizerSpec("adagrad").eps == 1e-10
    assert OptimizerSpec("rmsprop").momentum == 0.0 and OptimizerSpec("momentum").momentum == 0.9


def _group(params, **overrides):
    from lrprobe.worker.newton.directions import ParamGroupSpec

    return ParamGroupSpec(tuple(params), overrides)
