"""Splitting a model's trainable parameters into the groups that get one learning rate each."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

PartitionRule = str | Mapping[str, str]

REST_GROUP = "rest"
_NAMED_RULES = ("layer", "tensor", "single")


@dataclass(frozen=True)
class Group:
    """One group of parameters sharing a learning rate.

    ``param_names`` are keys of ``model.named_parameters()``; their order inside the group is the
    model's order.
    """

    name: str
    param_names: tuple[str, ...]


def partition(
    model: nn.Module, rule: PartitionRule = "layer", max_groups: int | None = None
) -> list[Group]:
    """Split the trainable parameters of ``model`` into groups, in ``named_parameters()`` order.

    Args:
        model: any module; parameters with ``requires_grad=False`` are left out.
        rule: ``"layer"`` (one group per module that directly owns parameters: a Linear's weight
            and bias together; the default), ``"tensor"`` (one group per parameter tensor),
            ``"single"`` (one group), or a mapping ``{regex: group_name}``: a parameter joins the
            group of the first regex that ``re.search``-es its name; groups follow the mapping's
            order (several regexes may name the same group) and unmatched parameters form a last
            group named ``"rest"``. Empty groups are dropped.
        max_groups: if given and exceeded, consecutive groups are merged into ``max_groups``
            contiguous groups of near-equal size.

    Raises:
        ValueError: unknown rule, invalid regex, no trainable parameter, ``max_groups < 1``.
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("the model has no trainable parameter (all have requires_grad=False)")
    if isinstance(rule, Mapping):
        groups = _by_regex(names, rule)
    elif rule == "layer":
        groups = _by_owner(names)
    elif rule == "tensor":
        groups = [Group(name, (name,)) for name in names]
    elif rule == "single":
        groups = [Group("all", tuple(names))]
    else:
        raise ValueError(
            f"unknown partition rule {rule!r}: use one of {', '.join(_NAMED_RULES)} "
            "or a mapping {regex: group_name}"
        )
    if max_groups is not None:
        groups = merge_consecutive(groups, max_groups)
    return groups


def merge_consecutive(groups: list[Group], max_groups: int) -> list[Group]:
    """Merge consecutive groups into at most ``max_groups`` contiguous, near-equal chunks."""
    if max_groups < 1:
        raise ValueError(f"max_groups must be at least 1, got {max_groups}")
    if len(groups) <= max_groups:
        return list(groups)
    merged = []
    bounds = [round(i * len(groups) / max_groups) for i in range(max_groups + 1)]
    for lo, hi in itertools.pairwise(bounds):
        chunk = groups[lo:hi]
        name = chunk[0].name if len(chunk) == 1 else f"{chunk[0].name}..{chunk[-1].name}"
        merged.append(Group(name, tuple(n for g in chunk for n in g.param_names)))
    return merged


def _by_owner(names: list[str]) -> list[Group]:
    owners: dict[str, list[str]] = {}
    for name in names:
        owner = name.rpartition(".")[0] or "<root>"
        owners.setdefault(owner, []).append(name)
    return [Group(owner, tuple(members)) for owner, members in owners.items()]


def _by_regex(names: list[str], rule: Mapping[str, str]) -> list[Group]:
    compiled = []
    for pattern, group_name in rule.items():
        try:
            compiled.append((re.compile(pattern), group_name))
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r} in the partition rule: {exc}") from None
    members: dict[str, list[str]] = {group_name: [] for _, group_name in compiled}
    members.setdefault(REST_GROUP, [])
    for name in names:
        target = next((g for regex, g in compiled if regex.search(name)), REST_GROUP)
        members[target].append(name)
    return [Group(g, tuple(m)) for g, m in members.items() if m]
