"""Recommended rates into the user's own optimizer: split its parameter groups by probe group,
keep every other hyperparameter, and keep its learning-rate schedule running.

Pure Python over ``torch.optim``'s data shapes (``param_groups`` dicts, scheduler lists), so it
needs no torch import. Both the SDK (``Recommendation.param_groups``) and the numeric core
(``ProbeResult``) use it, and neither may import the other: the SDK must stay torch-free
(importing ``lrprobe.worker.newton`` imports torch) and the numeric core must not depend on
the SDK's pydantic and httpx (importing ``lrprobe.client`` imports both). The torch-free,
dependency-free rulebook package is the one place both are allowed to import (import-linter
holds it to importing nothing of ours), so the single copy lives here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Group keys that hold a learning rate a scheduler reads back (OneCycleLR keeps max/min there).
_RATE_KEYS = ("initial_lr", "max_lr", "min_lr")
# Scheduler attributes that hold one entry per parameter group.
_SCALED = ("base_lrs", "max_lrs")
_COPIED = ("lr_lambdas", "min_lrs")


def split_groups(
    groups: Sequence[Mapping[str, Any]],
    names: Mapping[int, str],
    rates: Mapping[str, tuple[str, float]],
) -> tuple[list[dict[str, Any]], list[int], list[float | None]]:
    """Each group of ``groups`` split by probe group, with that group's recommended rate.

    ``names`` maps ``id(param)`` to its name, ``rates`` a parameter name to its probe group's
    name and learning rate. A new group copies every key of the group it came from; its ``lr``
    becomes the recommended rate times the schedule's current multiplier (``lr`` over
    ``initial_lr``), and ``initial_lr`` (and OneCycleLR's ``max_lr``/``min_lr``) the new base.
    Parameters without a rate stay in a group with their old settings. Returns the new groups,
    the index of the group each came from, and the factor its base rate was multiplied by
    (None where it had no base to multiply).
    """
    out: list[dict[str, Any]] = []
    origin: list[int] = []
    factors: list[float | None] = []
    for index, group in enumerate(groups):
        buckets: dict[str | None, list[Any]] = {}
        for param in _params(group["params"]):
            rate = rates.get(names.get(id(param), ""))
            buckets.setdefault(rate[0] if rate else None, []).append(param)
        for key, params in buckets.items():
            new = dict(group)
            new["params"] = params
            factor = None
            if key is not None:
                lr = next(rates[names[id(p)]][1] for p in params)
                factor = _rescale(new, lr)
                new["lrprobe_group"] = key
            out.append(new)
            origin.append(index)
            factors.append(factor)
    return out, origin, factors


def _params(params: Any) -> list[Any]:
    if isinstance(params, Mapping) or not isinstance(params, Iterable):
        return [params]
    return list(params)


def _rescale(group: dict[str, Any], lr: float) -> float | None:
    base = group.get("initial_lr", group.get("lr"))
    if not isinstance(base, int | float) or base <= 0:
        group["lr"] = lr
        if "initial_lr" in group:
            group["initial_lr"] = lr
        return None
    factor = lr / base
    current = group.get("lr", base)
    # The base itself becomes exactly the recommended rate, not base · (lr / base).
    group["lr"] = lr if "initial_lr" not in group or current == base else current * factor
    for key in _RATE_KEYS:
        if isinstance(group.get(key), int | float):
            group[key] = lr if key == "initial_lr" else group[key] * factor
    return factor


def apply_rates(
    optimizer: Any,
    names: Mapping[int, str],
    rates: Mapping[str, tuple[str, float]],
    schedulers: Iterable[Any] = (),
) -> None:
    """Split ``optimizer``'s groups in place (see :func:`split_groups`) and stretch the per-group
    lists of ``schedulers`` (``base_lrs``, LambdaLR's ``lr_lambdas``, …) to match, so that a
    schedule goes on multiplying the new base rates."""
    inner = unwrap(optimizer)
    before = len(inner.param_groups)
    groups, origin, factors = split_groups(inner.param_groups, names, rates)
    inner.param_groups[:] = groups  # the same list: wrappers that share it see the change
    for scheduler in schedulers:
        _stretch(_unwrap_scheduler(scheduler), before, origin, factors, groups)


def unwrap(optimizer: Any) -> Any:
    """The ``torch.optim`` optimizer inside a framework's wrapper (accelerate, Lightning)."""
    for _ in range(4):
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if inner is None or not hasattr(inner, "param_groups"):
            break
        optimizer = inner
    return optimizer


def _unwrap_scheduler(scheduler: Any) -> Any:
    inner = getattr(scheduler, "scheduler", None)
    return inner if inner is not None and hasattr(inner, "optimizer") else scheduler


def _stretch(
    scheduler: Any,
    before: int,
    origin: list[int],
    factors: list[float | None],
    groups: list[dict[str, Any]],
) -> None:
    for child in getattr(scheduler, "_schedulers", None) or ():  # SequentialLR, ChainedScheduler
        _stretch(child, before, origin, factors, groups)
    for attr in (*_SCALED, *_COPIED, "_last_lr"):
        values = getattr(scheduler, attr, None)
        if not isinstance(values, list) or len(values) != before:
            continue
        stretched = [values[i] for i in origin]
        if attr == "base_lrs":
            stretched = [
                g.get("initial_lr", v * f if f is not None else v)
                for g, v, f in zip(groups, stretched, factors, strict=True)
            ]
        elif attr in _SCALED:
            stretched = [
                v * f if f is not None and isinstance(v, int | float) else v
                for v, f in zip(stretched, factors, strict=True)
            ]
        elif attr == "_last_lr":
            stretched = [g["lr"] for g in groups]
        setattr(scheduler, attr, stretched)
