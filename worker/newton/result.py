"""What a probe returns: per-group learning rates, intervals and the diagnostics behind them."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from lrprobe.rules.regroup import apply_rates, split_groups

# 0.2: trajectory probe by default (issue 3); 0.3: λ₁ from {0.03, 0.1, 0.3} (issue 11)
METHOD_VERSION = "gn-probe/0.7"


@dataclass(frozen=True)
class Spread:
    """How per-batch η values of one group spread across the K probe batches."""

    median: float
    iqr: float
    negative_fraction: float


@dataclass(frozen=True)
class GroupResult:
    """One group's recommendation and diagnostics (docs/method.md §7.2).

    ``lr`` is what to give the optimizer; ``eta`` is the solver's η for this direction (the
    median η̄ of the trajectory's second half by default, the cubic rule's solution with
    ``method="fixed"``); ``flags`` explain any departure from ``scale · lr_factor · eta``.
    """

    name: str
    param_names: tuple[str, ...]
    numel: int
    lr: float
    lr_interval: tuple[float, float]
    eta: float
    eta_interval: tuple[float, float]
    eta_newton: float | None
    eta_diagonal: float | None
    g: float
    g_snr: float
    h: float
    curvature: float
    d3: float | None
    spread: Spread
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScaleCheck:
    """Predicted (quadratic model) vs realised loss change for the step ``scale · η · u``."""

    scale: float
    predicted: float
    realised: float

    @property
    def ratio(self) -> float:
        return self.realised / self.predicted if self.predicted else math.nan


# Cost of each pass kind in forward+backward units (docs/method.md §2.3: one group's row of H̄ costs
# ≈ 1.0–1.3 FB, with the D̄_sss pass ≈ 2.8–2.9; a forward is about a third of an FB).
PASS_WEIGHTS = {"forward_backward": 1.0, "hessian_vector": 1.2, "third_order": 1.6, "forward": 0.35}


@dataclass(frozen=True)
class Cost:
    """What a probe spent. ``fb_equivalents`` is wall time over the median FB time (it includes
    the solver and bootstrap overhead, large for tiny models); :attr:`pass_equivalents` counts
    the derivative passes only, the machine-independent figure to compare with training steps."""

    batches: int
    passes: dict[str, int]
    seconds: float
    fb_seconds: float
    fb_equivalents: float
    device: str

    @property
    def pass_equivalents(self) -> float:
        return sum(PASS_WEIGHTS.get(kind, 1.0) * n for kind, n in self.passes.items())


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of :func:`probe`. Serialise with :meth:`to_dict`/:meth:`to_json`."""

    optimizer: dict[str, Any]
    direction: str
    lr_factor: float
    scale: float
    groups: list[GroupResult]
    single_group_lr: float
    single_group_eta: float
    single_group_interval: tuple[float, float]
    status: str
    lam_int: float
    loss: float
    hessian_eigenvalues: list[float]
    coupling: list[list[float]]
    predicted_decrease: dict[str, float | None]
    scale_checks: list[ScaleCheck]
    cost: Cost
    method_version: str = METHOD_VERSION
    notes: list[str] = field(default_factory=list)
    method: str = "fixed"
    trajectory_losses: list[float] = field(default_factory=list)

    @property
    def lrs(self) -> dict[str, float]:
        """Recommended learning rate per group name."""
        return {g.name: g.lr for g in self.groups}

    def param_groups(
        self, model: nn.Module, base: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """``torch.optim`` parameter groups with the recommended learning rates.

        ``base``: the hyperparameters to keep, either one mapping for every parameter
        (``{"weight_decay": 0.01}``) or the parameter groups you would have built yourself (e.g.
        weight decay for weights, none for biases and norms). Those groups are split by probe
        group and keep all their keys but ``lr``. Parameters are matched by name; raises
        ValueError if the model does not have the probed parameters or has trainable parameters
        the probe did not cover.
        """
        params = self._check_model(model)
        if base is None or isinstance(base, Mapping):
            extra = dict(base or {})
            return [
                {**extra, "params": [params[n] for n in g.param_names], "lr": g.lr, "name": g.name}
                for g in self.groups
            ]
        groups, _, _ = split_groups(
            [{k: v for k, v in g.items() if k != "lr"} for g in base], _names(model), self._rates()
        )
        return groups

    def apply(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, schedulers: Iterable[Any] = ()
    ) -> torch.optim.Optimizer:
        """Put the recommended rates into ``optimizer`` (already built over ``model``), in place.

        Each of its parameter groups is split by probe group and keeps every other
        hyperparameter (weight decay, betas, …). A schedule keeps running: a group's ``lr``
        becomes the recommended rate times the schedule's current multiplier (``lr`` over
        ``initial_lr``), and the per-group lists of ``schedulers`` (``base_lrs``, LambdaLR's
        ``lr_lambdas``, …) follow the split. Applying again only rescales. Returns ``optimizer``.
        """
        self._check_model(model)
        apply_rates(optimizer, _names(model), self._rates(), schedulers)
        return optimizer

    def _rates(self) -> dict[str, tuple[str, float]]:
        return {n: (g.name, g.lr) for g in self.groups for n in g.param_names}

    def _check_model(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(model.named_parameters())
        probed = [n for g in self.groups for n in g.param_names]
        missing = [n for n in probed if n not in params]
        if missing:
            raise ValueError(f"the model has no parameters named {missing[:5]}: is it the same?")
        extra = [n for n, p in params.items() if p.requires_grad and n not in set(probed)]
        if extra:
            raise ValueError(f"the probe did not cover trainable parameters {extra[:5]}")
        return params

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists, non-finite floats become None."""
        data = asdict(self)
        for check, raw in zip(data["scale_checks"], self.scale_checks, strict=True):
            check["ratio"] = raw.ratio
        cleaned: dict[str, Any] = _clean(data)
        return cleaned

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        data = dict(data)
        data["groups"] = [
            GroupResult(
                **{
                    **{k: v for k, v in g.items() if k in _fields(GroupResult)},
                    "param_names": tuple(g["param_names"]),
                    "lr_interval": tuple(g["lr_interval"]),
                    "eta_interval": tuple(g["eta_interval"]),
                    "spread": Spread(**g["spread"]),
                    "flags": tuple(g["flags"]),
                }
            )
            for g in data["groups"]
        ]
        data["scale_checks"] = [
            ScaleCheck(**{k: v for k, v in c.items() if k != "ratio"}) for c in data["scale_checks"]
        ]
        data["cost"] = Cost(**data["cost"])
        data["single_group_interval"] = tuple(data["single_group_interval"])
        return cls(**{k: v for k, v in data.items() if k in _fields(cls)})

    def table(self) -> str:
        """A plain-text per-group table, the global figures and the notes (what
        ``print(result)`` shows)."""
        rows = [("group", "params", "lr", "interval (10-90%)", "eta", "flags")]
        for g in self.groups:
            rows.append(
                (
                    g.name,
                    f"{g.numel:,}",
                    f"{g.lr:.4g}",
                    f"{g.lr_interval[0]:.3g} – {g.lr_interval[1]:.3g}",
                    f"{g.eta:.4g}",
                    ", ".join(g.flags) or "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lo, hi = self.single_group_interval
        lines += [
            "",
            f"single-group lr: {self.single_group_lr:.4g} (interval {lo:.3g} – {hi:.3g})",
            f"optimizer: {self.optimizer['name']}, direction: {self.direction}, "
            f"scale λ₁ = {self.scale:g}, solver: {self.status}",
            f"cost: {self.cost.batches} batches, {self.cost.fb_equivalents:.0f} forward+backward "
            f"equivalents, {self.cost.seconds:.1f} s on {self.cost.device}",
        ]
        # The notes are how the probe says it is unsure (each flag has one): never left out.
        lines += [f"note: {note}" for note in self.notes] or ["no notes"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# What each flag tells the user, in the words the notes use. A flag is raised per group; the
# probe adds one note per raised flag, so that flags and notes always agree (and "no notes"
# means that nothing was flagged).
FLAG_MEANINGS = {
    "unused": "these parameters do not change the loss; they keep the single-group rate",
    "negative": (
        "the Newton step for this group pointed uphill in at least 80 % of the evaluations, so "
        "its rate is mostly the floor tied to the single-group rate, not a measurement"
    ),
    "noisy": "the 10–90 % interval of its η reaches 0: the rate is uncertain",
    "low_snr": (  # the fixed-θ probe only
        "the mean slope along its step is within two standard errors of zero: the probe "
        "cannot tell whether moving it lowers the loss; probe with more or larger batches"
    ),
    "fallback_global": "it gets the single-group rate instead of its own",
}


def flag_notes(groups: list[GroupResult]) -> list[str]:
    """One sentence per raised flag, naming the groups that raised it."""
    notes = []
    for flag, meaning in FLAG_MEANINGS.items():
        names = [g.name for g in groups if flag in g.flags]
        if names:
            which = "group " if len(names) == 1 else "groups "
            notes.append(f"{flag} ({which}{', '.join(names)}): {meaning}")
    return notes


def _names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _fields(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
