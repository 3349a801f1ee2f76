"""Splitting a model's trainable parameters into the groups that get one learning rate each."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from torch import nn

PartitionRule = str | Mapping[str, str]
MaxGroups = int | Literal["auto"] | None

REST_GROUP = "rest"
_NAMED_RULES = ("layer", "block", "kind", "tensor", "single")
# The automatic cap on the number of groups. One summaries evaluation costs about S
# forward+backward passes (README, cost table), and the trajectory re-solves every 4 steps, so
# S = 16 keeps the derivative passes to about 4 passes per training step. The quality benchmark
# found finer groups noisier, not better (per tensor: median ratio 1.37 against 1.08 per
# layer), so a cap costs little. A 12-block GPT-2 has 75 layers, 38 kinds and 15 blocks: the
# cap lands on one group per block, with the embeddings and the final norm apart.
AUTO_MAX_GROUPS = 16


@dataclass(frozen=True)
class Group:
    """One group of parameters sharing a learning rate.

    ``param_names`` are keys of ``model.named_parameters()``; their order inside the group is the
    model's order.
    """

    name: str
    param_names: tuple[str, ...]


def partition(
    model: nn.Module, rule: PartitionRule = "layer", max_groups: MaxGroups = None
) -> list[Group]:
    """Split the trainable parameters of ``model`` into groups, in ``named_parameters()`` order.

    Args:
        model: any module; parameters with ``requires_grad=False`` are left out.
        rule: ``"layer"`` (one group per module that directly owns parameters: a Linear's weight
            and bias together; the default), ``"tensor"`` (one group per parameter tensor),
            ``"block"`` (one group per repeated block, such as a transformer layer; parameters
            outside the blocks are grouped per layer), ``"kind"`` (within each block, one group
            per kind: ``attention``, ``mlp``, ``norm``, ``embedding``; outside the blocks, the
            embeddings together and the rest per layer), ``"single"`` (one group), or a mapping
            ``{regex: group_name}``: a parameter joins the group of the first regex that
            ``re.search``-es its name; groups follow the mapping's order (several regexes may
            name the same group) and unmatched parameters form a last group named ``"rest"``.
            Empty groups are dropped.
        max_groups: if given and exceeded, consecutive groups are merged into ``max_groups``
            contiguous groups of near-equal size. ``"auto"``: at most :data:`AUTO_MAX_GROUPS`,
            reached by coarsening along the model's structure first (layer, then kind, then
            block, see :func:`coarsened`), merging consecutive groups only if that is not
            enough; a model with blocks whose rule is ``"layer"`` is thus probed per block.

    A parameter shared by several modules (an embedding tied to the output head) appears once,
    under its first name, as in ``named_parameters()``, so it is one tensor in one group and its
    gradient sums both uses.

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
    elif rule == "block":
        groups = _by_block(names)
    elif rule == "kind":
        groups = _by_kind(model, names)
    elif rule == "tensor":
        groups = [Group(name, (name,)) for name in names]
    elif rule == "single":
        groups = [Group("all", tuple(names))]
    else:
        raise ValueError(
            f"unknown partition rule {rule!r}: use one of {', '.join(_NAMED_RULES)} "
            "or a mapping {regex: group_name}"
        )
    if max_groups == "auto":
        if isinstance(rule, str) and len(groups) > AUTO_MAX_GROUPS:
            groups = coarsened(model, rule, AUTO_MAX_GROUPS)
        groups = merge_consecutive(groups, AUTO_MAX_GROUPS)
    elif max_groups is not None:
        if isinstance(max_groups, str | bool):
            raise ValueError(f"max_groups must be an integer, 'auto' or None, got {max_groups!r}")
        groups = merge_consecutive(groups, max_groups)
    return groups


def coarsened(model: nn.Module, rule: str, limit: int) -> list[Group]:
    """The finest of ``rule``, then ``"kind"``, then ``"block"`` that has at most ``limit``
    groups (the coarsest when none does): merging along the model's own structure keeps an
    attention layer apart from an MLP, where merging consecutive groups would not."""
    order = ["tensor", "layer", "kind", "block"]
    candidates = order[order.index(rule) :] if rule in order else [rule]
    groups: list[Group] = []
    for candidate in candidates:
        groups = partition(model, candidate)
        if len(groups) <= limit:
            break
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


# A block is a module inside a container (ModuleList, Sequential) at an integer index that sits
# next to at least one sibling: ``transformer.h.3``, ``encoder.layer.11``, ``blocks.0``.
def _block_of(name: str, containers: set[str]) -> str | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit() and ".".join(parts[:i]) in containers:
            return ".".join(parts[: i + 1])
    return None


def _block_containers(names: list[str]) -> set[str]:
    """Module paths under which several integer-indexed children own parameters."""
    indices: dict[str, set[str]] = {}
    for name in names:
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part.isdigit():
                indices.setdefault(".".join(parts[:i]), set()).add(part)
                break
    # A root Sequential of single layers (``0.weight``, ``2.weight``) has indexed children too,
    # but they are layers, not blocks: a block holds more than one module with parameters.
    owners: dict[str, set[str]] = {}
    for name in names:
        owner = name.rpartition(".")[0]
        parts = owner.split(".")
        for i, part in enumerate(parts):
            if part.isdigit():
                owners.setdefault(".".join(parts[: i + 1]), set()).add(owner)
                break
    return {
        container
        for container, idx in indices.items()
        if len(idx) >= 2 and any(len(owners.get(_join(container, i), set())) > 1 for i in idx)
    }


def _join(prefix: str, part: str) -> str:
    return f"{prefix}.{part}" if prefix else part


def _by_block(names: list[str]) -> list[Group]:
    containers = _block_containers(names)
    keys = [_block_of(n, containers) or _owner(n) for n in names]
    return _ordered(names, keys)


def _by_kind(model: nn.Module, names: list[str]) -> list[Group]:
    containers = _block_containers(names)
    modules = dict(model.named_modules())
    keys = []
    for name in names:
        block = _block_of(name, containers)
        kind = _kind(name, modules, block)
        if block is not None:
            keys.append(f"{block}.{kind}")
        else:
            keys.append("embedding" if kind == "embedding" else _owner(name))
    return _ordered(names, keys)


# Module names that mark attention inside a block (GPT-2's attn.c_attn, BERT's attention.self,
# Llama's self_attn.q_proj, nanoGPT-style qkv). A bare "proj" is both attention's and the MLP's
# output in some models, so it says nothing.
_ATTENTION_NAMES = re.compile(
    r"attn|attention|qkv|query|key|value|^[qkvo]_proj$|^(in|out)_proj", re.IGNORECASE
)


def _kind(name: str, modules: Mapping[str, nn.Module], block: str | None) -> str:
    """``embedding``, ``norm``, ``attention`` or ``mlp``, from the owning module's class and the
    names of the modules between it and its block (see ``_ATTENTION_NAMES``); the rest of a
    block is ``mlp``."""
    owner = name.rpartition(".")[0]
    module = modules.get(owner)
    cls = type(module).__name__.lower() if module is not None else ""
    if isinstance(module, nn.Embedding) or "embedding" in cls:
        return "embedding"
    if "norm" in cls:
        return "norm"
    path = owner[len(block) :] if block and owner.startswith(block) else owner
    parts = [*path.split("."), name.rpartition(".")[2]]
    if "attention" in cls or any(_ATTENTION_NAMES.search(part) for part in parts if part):
        return "attention"
    return "mlp"


def _owner(name: str) -> str:
    return name.rpartition(".")[0] or "<root>"


def _ordered(names: list[str], keys: list[str]) -> list[Group]:
    members: dict[str, list[str]] = {}
    for name, key in zip(names, keys, strict=True):
        members.setdefault(key, []).append(name)
    return [Group(key, tuple(m)) for key, m in members.items()]
