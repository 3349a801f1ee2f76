"""`partition`: which parameters share a learning rate, in which order."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from lrprobe.worker.newton import Group, partition
from tests.newton.cases import TanhMLP, TransformerBlock, UnusedLayerMLP


def names(groups: list[Group]) -> list[tuple[str, ...]]:
    return [g.param_names for g in groups]


def mlp(depth: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return TanhMLP((4,) * depth + (2,))


def test_layer_rule_groups_each_module_weight_with_bias() -> None:
    assert names(partition(mlp())) == [
        ("0.weight", "0.bias"),
        ("2.weight", "2.bias"),
        ("4.weight", "4.bias"),
    ]


def test_layer_rule_covers_root_parameters_and_nested_modules() -> None:
    torch.manual_seed(0)
    groups = partition(TransformerBlock(), rule="layer")
    assert names(groups) == [
        ("pos",),
        ("ln1.weight", "ln1.bias"),
        ("attn.in_proj_weight", "attn.in_proj_bias"),
        ("attn.out_proj.weight", "attn.out_proj.bias"),
        ("ln2.weight", "ln2.bias"),
        ("fc1.weight", "fc1.bias"),
        ("fc2.weight", "fc2.bias"),
        ("head.weight", "head.bias"),
    ]
    assert len({g.name for g in groups}) == len(groups), "group names must be unique"


def test_layer_rule_keeps_modules_that_the_forward_does_not_use() -> None:
    assert names(partition(UnusedLayerMLP())) == [
        ("fc1.weight", "fc1.bias"),
        ("unused.weight", "unused.bias"),
        ("fc2.weight", "fc2.bias"),
    ]


def test_tensor_rule_is_one_group_per_parameter_named_after_it() -> None:
    model = mlp()
    groups = partition(model, rule="tensor")
    expected = [n for n, _ in model.named_parameters()]
    assert [g.name for g in groups] == expected
    assert names(groups) == [(n,) for n in expected]


def test_single_rule_is_one_group_with_everything() -> None:
    model = mlp()
    groups = partition(model, rule="single")
    assert names(groups) == [tuple(n for n, _ in model.named_parameters())]


def test_regex_rule_first_match_wins_and_the_rest_comes_last() -> None:
    groups = partition(mlp(), rule={r"^0\.": "first", r"weight$": "weights"})
    assert [(g.name, g.param_names) for g in groups] == [
        ("first", ("0.weight", "0.bias")),
        ("weights", ("2.weight", "4.weight")),
        ("rest", ("2.bias", "4.bias")),
    ]


def test_regex_rule_uses_search_and_mapping_order() -> None:
    groups = partition(mlp(), rule={"bias": "b", "2": "two"})
    assert [(g.name, g.param_names) for g in groups] == [
        ("b", ("0.bias", "2.bias", "4.bias")),
        ("two", ("2.weight",)),
        ("rest", ("0.weight", "4.weight")),
    ]


def test_regex_rule_drops_empty_groups() -> None:
    groups = partition(mlp(), rule={"no_such_parameter": "x", ".": "everything"})
    assert [(g.name, g.param_names) for g in groups] == [
        ("everything", ("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"))
    ]


@pytest.mark.parametrize("rule", ["layer", "tensor", "single"])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_max_groups_merges_consecutive_whole_groups(rule: str, k: int) -> None:
    model = mlp(depth=5)  # 5 layers, 10 tensors
    fine = partition(model, rule=rule)
    merged = partition(model, rule=rule, max_groups=k)
    assert len(merged) == min(k, len(fine))
    # Same parameters in the same order, and each merged group is a run of whole fine groups.
    flat = [n for g in merged for n in g.param_names]
    assert flat == [n for g in fine for n in g.param_names]
    start = 0
    fine_bounds = {0}
    for g in fine:
        start += len(g.param_names)
        fine_bounds.add(start)
    start = 0
    for g in merged:
        start += len(g.param_names)
        assert start in fine_bounds, f"a {rule} group was split by max_groups={k}"


def test_max_groups_above_the_group_count_changes_nothing() -> None:
    model = mlp()
    assert partition(model, max_groups=10) == partition(model)


@pytest.mark.parametrize("rule", ["layer", "tensor", "single", {"weight": "w"}])
def test_frozen_parameters_are_left_out(rule: str | dict[str, str]) -> None:
    model = mlp()
    model[0].bias.requires_grad_(False)
    model[2].weight.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    grouped = [n for g in partition(model, rule=rule) for n in g.param_names]
    assert grouped == ["0.weight", "4.weight", "4.bias"]


def test_layer_rule_drops_a_fully_frozen_module() -> None:
    model = mlp()
    model[2].requires_grad_(False)
    assert names(partition(model)) == [("0.weight", "0.bias"), ("4.weight", "4.bias")]


@pytest.mark.parametrize("rule", ["bogus", "Layer", ""])
def test_unknown_rule_raises_value_error_naming_it(rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(rule) if rule else "rule"):
        partition(mlp(), rule=rule)


def test_invalid_regex_raises_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"\(\[oops"):
        partition(mlp(), rule={"weight": "w", "([oops": "bad"})


def test_max_groups_below_one_raises_value_error() -> None:
    with pytest.raises(ValueError, match="max_groups"):
        partition(mlp(), max_groups=0)
