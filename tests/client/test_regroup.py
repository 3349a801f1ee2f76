"""Rates into the user's own optimizer: groups split by probe group keep their other settings,
and schedules keep multiplying the new base rates. The SDK and the numeric core both use
``lrprobe.rules.regroup``."""

from __future__ import annotations

import pytest
import torch

from lrprobe.client import Recommendation
from lrprobe.rules import regroup
from tests.client.fakes import recommendation_body

RATES = {"0.weight": ("0", 0.1), "0.bias": ("0", 0.1), "2.weight": ("2", 0.02),
         "2.bias": ("2", 0.02)}  # fmt: skip


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def decay_groups(model: torch.nn.Module) -> list[dict]:
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if n.endswith("weight")], "weight_decay": 0.1},
        {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
    ]


def ids(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def test_groups_split_by_layer_keep_every_other_setting() -> None:
    model = net()
    optimizer = torch.optim.AdamW(decay_groups(model), lr=1e-3, betas=(0.9, 0.95))
    regroup.apply_rates(optimizer, ids(model), RATES)
    got = [
        ([n for p in g["params"] for n, q in model.named_parameters() if q is p], g["lr"],
         g["weight_decay"], g["betas"], g["lrprobe_group"])
        for g in optimizer.param_groups
    ]  # fmt: skip
    assert got == [
        (["0.weight"], 0.1, 0.1, (0.9, 0.95), "0"),
        (["2.weight"], 0.02, 0.1, (0.9, 0.95), "2"),
        (["0.bias"], 0.1, 0.0, (0.9, 0.95), "0"),
        (["2.bias"], 0.02, 0.0, (0.9, 0.95), "2"),
    ]
    optimizer.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()  # torch accepts the regrouped optimizer, state and all
    assert len(optimizer.state) == 4


def test_a_warmup_schedule_goes_on_multiplying_the_new_base_rates() -> None:
    model = net()
    optimizer = torch.optim.SGD(decay_groups(model), lr=1.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
    for _ in range(4):  # 40 % into the warm-up
        optimizer.step()
        warmup.step()
    regroup.apply_rates(optimizer, ids(model), RATES, [warmup])
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.01, 0.05, 0.01])
    assert warmup.base_lrs == pytest.approx([0.1, 0.02, 0.1, 0.02])
    for _ in range(10):
        optimizer.step()
        warmup.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.02, 0.1, 0.02])
    # a second recommendation only rescales: same groups, the schedule still applies
    regroup.apply_rates(optimizer, ids(model), {n: (g, 2 * lr) for n, (g, lr) in RATES.items()},
                        [warmup])  # fmt: skip
    assert len(optimizer.param_groups) == 4
    assert warmup.base_lrs == pytest.approx([0.2, 0.04, 0.2, 0.04])


def test_a_cosine_schedule_continues_from_its_current_point() -> None:
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    for _ in range(5):
        optimizer.step()
        cosine.step()
    halfway = optimizer.param_groups[0]["lr"]
    regroup.apply_rates(optimizer, ids(model), RATES, [cosine])
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [0.1 * halfway, 0.02 * halfway]
    )
    for _ in range(5):
        optimizer.step()
        cosine.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0, 0.0], abs=1e-12)


def test_frozen_or_unprobed_parameters_keep_their_group() -> None:
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    regroup.apply_rates(optimizer, ids(model), {"0.weight": ("0", 0.1)})
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.3]
    assert "lrprobe_group" not in optimizer.param_groups[1]


def test_the_sdk_recommendation_applies_to_a_live_optimizer_and_builds_fresh_groups() -> None:
    model = net()
    rec = Recommendation(recommendation_body())
    optimizer = torch.optim.AdamW(decay_groups(model), lr=1e-3)
    assert rec.apply(optimizer, model) is optimizer
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        (0.1, 0.1), (0.02, 0.1), (0.1, 0.0), (0.02, 0.0)
    ]  # fmt: skip
    fresh = torch.optim.AdamW(rec.param_groups(model, base=decay_groups(model)))
    assert [(g["lr"], g["weight_decay"]) for g in fresh.param_groups] == [
        (g["lr"], g["weight_decay"]) for g in optimizer.param_groups
    ]
    same = rec.param_groups(model, base={"weight_decay": 0.05})
    assert [(g["lr"], g["weight_decay"]) for g in same] == [(0.1, 0.05), (0.02, 0.05)]
    with pytest.raises(ValueError, match="is this the model that was probed"):
        rec.apply(optimizer, torch.nn.Sequential(torch.nn.Linear(4, 3)))
