"""The step ``u`` the user's optimizer would take next (with lr = 1); docs/method.md §1.3.

η multiplies ``u``, so a probe along the optimizer's own direction yields learning rates for that
optimizer. That is only right for optimizers whose update is linear in the learning rate
(θ ← θ − lr·u with ``u`` independent of lr); :data:`NOT_LINEAR` says why the others are refused.
Nothing here commits optimizer state: buffers are read, never written.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

OptimizerName = Literal[
    "sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "nadam", "radam", "lion"
]
ParamState = Mapping[str, Mapping[str, Tensor | float]]
OPTIMIZERS: tuple[str, ...] = (
    "sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "nadam", "radam", "lion",
)  # fmt: skip
# The directions of these four are computed from their formulas (and so can use an estimated
# second moment without saved state); the others are read off a real step on a copy.
_FORMULA = ("sgd", "momentum", "adam", "adamw")

# torch keyword arguments beyond the spec's common fields, per optimizer, with their types.
OPTIONS: dict[str, dict[str, type]] = {
    "adam": {"amsgrad": bool},
    "adamw": {"amsgrad": bool},
    "rmsprop": {"alpha": float, "centered": bool},
    "adagrad": {"lr_decay": float, "initial_accumulator_value": float},
    "nadam": {"momentum_decay": float, "decoupled_weight_decay": bool},
    "radam": {"decoupled_weight_decay": bool},
}
# Which common fields each optimizer takes.
_FIELDS: dict[str, tuple[str, ...]] = {
    "sgd": ("weight_decay",),
    "momentum": ("momentum", "dampening", "nesterov", "weight_decay"),
    "adam": ("betas", "eps", "weight_decay"),
    "adamw": ("betas", "eps", "weight_decay"),
    "rmsprop": ("momentum", "eps", "weight_decay"),
    "adagrad": ("eps", "weight_decay"),
    "nadam": ("betas", "eps", "weight_decay"),
    "radam": ("betas", "eps", "weight_decay"),
    "lion": ("betas", "weight_decay"),
}
_OVERRIDABLE = ("momentum", "dampening", "nesterov", "betas", "eps", "weight_decay")

NOT_LINEAR: dict[str, str] = {
    "LBFGS": "L-BFGS searches along a line and calls the loss several times per step, so its "
    "step is not the learning rate times one direction",
    "Rprop": "Rprop's learning rate only initialises per-element step sizes that then grow and "
    "shrink on their own, so its step is not proportional to the learning rate",
    "ASGD": "ASGD's step size η_t = lr / (1 + λ·lr·t)^α is not proportional to the learning rate",
    "Adafactor": "Adafactor steps by min(lr, 1/√t), which is not proportional to the learning rate",
    "SparseAdam": "SparseAdam needs sparse gradients, and the probe's derivatives are dense",
}
"""Optimizers refused because their update is not ``lr × u`` (the probe's premise)."""


@dataclass(frozen=True)
class ParamGroupSpec:
    """Hyperparameters of some parameters that differ from the optimizer's defaults, as in a
    ``torch.optim`` parameter group (e.g. ``weight_decay=0`` for biases and norms)."""

    params: tuple[str, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer the user will train with; hyperparameters follow ``torch.optim``.

    ``momentum``, ``betas`` and ``eps`` default to the named optimizer's own defaults (momentum
    0.9 for "momentum", 0 for "rmsprop"; betas (0.9, 0.99) for "lion"; eps 1e-10 for
    "adagrad"). ``options`` holds the other keyword arguments of that optimizer
    (:data:`OPTIONS`), ``param_groups`` the parameters whose hyperparameters differ.
    """

    name: OptimizerName = "sgd"
    momentum: float = None  # type: ignore[assignment]
    dampening: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = None  # type: ignore[assignment]
    eps: float = None  # type: ignore[assignment]
    weight_decay: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)
    param_groups: tuple[ParamGroupSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}: use one of {', '.join(OPTIMIZERS)}")
        defaults = {
            "momentum": 0.9 if self.name == "momentum" else 0.0,
            "betas": (0.9, 0.99) if self.name == "lion" else (0.9, 0.999),
            "eps": 1e-10 if self.name == "adagrad" else 1e-8,
        }
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        object.__setattr__(self, "betas", tuple(self.betas))
        if not 0 <= self.momentum < 1 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError("momentum and betas must lie in [0, 1)")
        if self.eps <= 0 or self.weight_decay < 0:
            raise ValueError("eps must be > 0 and weight_decay ≥ 0")
        allowed = OPTIONS.get(self.name, {})
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ValueError(
                f"{self.name} takes no option {', '.join(unknown)}: "
                f"its options are {', '.join(allowed) or 'none'}"
            )
        for key, value in self.options.items():
            if (allowed[key] is bool) != isinstance(value, bool):
                kind = "true or false" if allowed[key] is bool else "a number"
                raise ValueError(f"option {key} of {self.name} must be {kind}, not {value!r}")
        seen: set[str] = set()
        for group in self.param_groups:
            bad = sorted(set(group.overrides) - set(_OVERRIDABLE) - set(allowed))
            if bad:
                raise ValueError(f"a parameter group cannot set {', '.join(bad)}")
            twice = seen.intersection(group.params)
            if twice:
                raise ValueError(f"parameters {sorted(twice)[:5]} are in two parameter groups")
            seen.update(group.params)
            self._override(group)  # validates the group's values

    @classmethod
    def parse(cls, value: str | OptimizerSpec) -> OptimizerSpec:
        return value if isinstance(value, OptimizerSpec) else cls(name=value)  # type: ignore[arg-type]

    def for_param(self, name: str) -> OptimizerSpec:
        """The hyperparameters of parameter ``name`` (its group's, else the defaults)."""
        for group in self.param_groups:
            if name in group.params:
                return self._override(group)
        return dataclasses.replace(self, param_groups=()) if self.param_groups else self

    def _override(self, group: ParamGroupSpec) -> OptimizerSpec:
        fields_ = {k: v for k, v in group.overrides.items() if k in _OVERRIDABLE}
        options = {k: v for k, v in group.overrides.items() if k not in _OVERRIDABLE}
        return dataclasses.replace(
            self, param_groups=(), options={**self.options, **options}, **fields_
        )

    def torch_class(self) -> type[torch.optim.Optimizer]:
        """The ``torch.optim`` class (Lion comes from the ``lion-pytorch`` package)."""
        if self.name == "lion":
            try:
                lion: type[torch.optim.Optimizer] = importlib.import_module("lion_pytorch").Lion
                return lion
            except ImportError:
                raise ValueError(
                    "the lion optimizer needs the lion-pytorch package: pip install lion-pytorch"
                ) from None
        return {
            "sgd": torch.optim.SGD,
            "momentum": torch.optim.SGD,
            "adam": torch.optim.Adam,
            "adamw": torch.optim.AdamW,
            "rmsprop": torch.optim.RMSprop,
            "adagrad": torch.optim.Adagrad,
            "nadam": torch.optim.NAdam,
            "radam": torch.optim.RAdam,
        }[self.name]

    def torch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`torch_class` for these hyperparameters (no lr)."""
        return {k: getattr(self, k) for k in _FIELDS[self.name]} | dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        """Name and hyperparameters, JSON-ready (what a result reports)."""
        out: dict[str, Any] = {"name": self.name, **self.torch_kwargs()}
        if "betas" in out:
            out["betas"] = list(out["betas"])
        if self.param_groups:
            out["param_groups"] = [
                {"params": list(g.params), **_jsonable(g.overrides)} for g in self.param_groups
            ]
        return out


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def build_optimizer(
    spec: OptimizerSpec, groups: Sequence[Sequence[str]], params: Mapping[str, Tensor]
) -> tuple[torch.optim.Optimizer, list[int]]:
    """A ``torch.optim`` optimizer for ``spec`` over ``params``, at lr 0.

    Each of ``groups`` (lists of parameter names) is split further by the hyperparameters of its
    parameters, so one ``torch.optim`` group never mixes two of the user's groups. Returns the
    optimizer and, for each of its parameter groups, the index in ``groups`` it belongs to.
    """
    torch_groups: list[dict[str, Any]] = []
    owner: list[int] = []
    for index, names in enumerate(groups):
        buckets: dict[int, tuple[OptimizerSpec, list[Tensor]]] = {}
        for name in names:
            own = spec.for_param(name)
            key = next((i for i, g in enumerate(spec.param_groups) if name in g.params), -1)
            buckets.setdefault(key, (own, []))[1].append(params[name])
        for own, tensors in buckets.values():
            torch_groups.append({"params": tensors, **own.torch_kwargs(), "lr": 0.0})
            owner.append(index)
    # lr=1.0 for the constructor only: some optimizers (Lion) refuse a zero default.
    # (typed as a callable: torch.optim.Optimizer's own constructor takes no lr)
    optimizer_class: Callable[..., torch.optim.Optimizer] = spec.torch_class()
    optimizer = optimizer_class(torch_groups, lr=1.0, **spec.torch_kwargs())
    return optimizer, owner


_CLASSES: tuple[tuple[type[torch.optim.Optimizer], str], ...] = (
    (torch.optim.AdamW, "adamw"),  # before Adam: AdamW subclasses it
    (torch.optim.Adam, "adam"),
    (torch.optim.SGD, "sgd"),
    (torch.optim.RMSprop, "rmsprop"),
    (torch.optim.Adagrad, "adagrad"),
    (torch.optim.NAdam, "nadam"),
    (torch.optim.RAdam, "radam"),
)


def optimizer_name(optimizer: torch.optim.Optimizer) -> OptimizerName:
    """Which of :data:`OPTIMIZERS` a live optimizer is; ValueError saying why if none."""
    cls = type(optimizer)
    if cls.__name__ in NOT_LINEAR and cls.__module__.startswith("torch.optim"):
        raise ValueError(
            f"{cls.__name__} cannot be probed: {NOT_LINEAR[cls.__name__]}. lrprobe's rates "
            "multiply the step the optimizer takes at lr = 1"
        )
    first = optimizer.param_groups[0]
    for base, name in _CLASSES:
        if isinstance(optimizer, base):
            if name == "adam" and first.get("decoupled_weight_decay"):
                return "adamw"
            if name == "sgd" and any(g.get("momentum", 0) > 0 for g in optimizer.param_groups):
                return "momentum"
            return name  # type: ignore[return-value]
    if cls.__name__ == "Lion" and cls.__module__.startswith("lion_pytorch"):
        if getattr(optimizer, "decoupled_wd", False) or getattr(optimizer, "use_triton", False):
            raise ValueError(
                "Lion with decoupled_weight_decay divides the decay by its initial lr, so its "
                "step is not proportional to the learning rate: use decoupled_weight_decay=False"
            )
        return "lion"
    raise ValueError(
        f"{cls.__name__} is not supported: lrprobe reads the direction off one step at lr = 1, "
        "which is right only for optimizers whose update is linear in the learning rate, and "
        f"it knows that of {', '.join(OPTIMIZERS)} (torch.optim's SGD, Adam, AdamW, RMSprop, "
        "Adagrad, NAdam, RAdam and lion-pytorch's Lion)"
    )


def from_torch(
    optimizer: torch.optim.Optimizer, model: nn.Module
) -> tuple[OptimizerSpec, dict[str, dict[str, Tensor | float]]]:
    """The spec (with one :class:`ParamGroupSpec` per parameter group whose hyperparameters
    differ from the first group's) and the per-parameter state, keyed by parameter name, of a
    live optimizer. Raises ValueError for an optimizer the probe cannot follow."""
    name = optimizer_name(optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    values = [_group_values(name, group) for group in optimizer.param_groups]
    base = values[0]
    groups = []
    for group, own in zip(optimizer.param_groups[1:], values[1:], strict=True):
        diff = {k: v for k, v in own.items() if base.get(k) != v}
        members = tuple(names[id(p)] for p in group["params"] if id(p) in names)
        if diff and members:
            groups.append(ParamGroupSpec(members, diff))
    options = set(OPTIONS.get(name, {}))
    spec = OptimizerSpec(
        name=name,
        options={k: v for k, v in base.items() if k in options},
        param_groups=tuple(groups),
        **{k: v for k, v in base.items() if k not in options},
    )
    state = {names[id(p)]: dict(s) for p, s in optimizer.state.items() if id(p) in names}
    return spec, state


def _group_values(name: str, group: Mapping[str, Any]) -> dict[str, Any]:
    if group.get("maximize"):
        raise ValueError("maximize=True climbs the loss; the probe needs a minimiser")
    keys = _FIELDS[name] + tuple(OPTIONS.get(name, {}))
    if name == "sgd":
        keys = _FIELDS["momentum"]
    out: dict[str, Any] = {}
    for key in keys:
        if key not in group:
            continue
        value = group[key]
        if key == "betas":
            out[key] = tuple(float(b) for b in value)
        elif isinstance(value, bool):
            out[key] = value
        else:
            out[key] = float(value)
    if name == "sgd":  # plain SGD: no momentum anywhere, the momentum fields mean nothing
        out = {"weight_decay": out.get("weight_decay", 0.0)}
    return out


class DirectionRule:
    """Builds ``u`` from a gradient, with the checkpoint's optimizer state when there is one.

    SGD, momentum, Adam and AdamW use their formulas (Adam without saved state estimates the
    second moment from the direction batches first); the others take a real ``step()`` at
    lr = 1 on copies of the parameters and state, which is their direction because their update
    is linear in lr. Each parameter uses its own group's hyperparameters.
    """

    def __init__(self, spec: OptimizerSpec, state: ParamState | None, names: list[str]) -> None:
        self.spec = spec
        self.specs = {n: spec.for_param(n) for n in names}
        # AMSGrad keeps a running maximum the formulas below do not model: take the real step.
        self._formula = spec.name in _FORMULA and not any(
            s.options.get("amsgrad") for s in self.specs.values()
        )
        state = state or {}
        if spec.name == "momentum":
            key: tuple[str, ...] = ("momentum_buffer",)
        elif spec.name in ("adam", "adamw"):
            key = ("exp_avg", "exp_avg_sq", "step")
        elif spec.name == "sgd":
            key = ()
        else:
            key = ("step",) if spec.name != "lion" else ("exp_avg",)
        have = [n for n in names if all(state.get(n, {}).get(k) is not None for k in key)]
        if key and have and len(have) != len(names):
            missing = [n for n in names if n not in have]
            raise ValueError(f"optimizer state is missing for parameters: {missing[:5]}")
        self.state = state if key and have else {}
        self._sq_sum: dict[str, Tensor] = {}
        self._sq_count = 0

    @property
    def needs_second_moment(self) -> bool:
        """Adam without saved state: v̂ is estimated from the direction batches first."""
        return self._formula and self.spec.name in ("adam", "adamw") and not self.state

    @property
    def description(self) -> str:
        saved = "checkpoint state" if self.state else "no saved state"
        if not self._formula:
            first = "" if self.state else ", its first step"
            return f"{self.spec.torch_class().__name__} step ({saved}{first})"
        return {
            "sgd": "gradient",
            "momentum": "momentum buffer" if self.state else "gradient (no momentum buffer)",
            "adam": f"Adam step ({saved})",
            "adamw": f"AdamW step ({saved})",
        }[self.spec.name]

    @property
    def lr_factor(self) -> float:
        """lr = factor · η. Without a buffer, heavy-ball's buffer averages ≈ g / (1 − β)."""
        if self.spec.name == "momentum" and not self.state:
            return 1.0 - self.spec.momentum
        return 1.0

    def observe(self, grads: Mapping[str, Tensor]) -> None:
        for name, grad in grads.items():
            sq = grad.detach().square()
            self._sq_sum[name] = self._sq_sum[name] + sq if name in self._sq_sum else sq
        self._sq_count += 1

    def direction(
        self, grads: Mapping[str, Tensor], params: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        if not self._formula:
            return self._real_step(grads, params)
        out = {}
        for name, grad in grads.items():
            s = self.specs[name]
            theta = params[name].detach()
            g = grad.detach()
            if s.weight_decay and s.name != "adamw":
                g = g + s.weight_decay * theta
            out[name] = self._step(name, s, g, theta)
        return out

    def _real_step(
        self, grads: Mapping[str, Tensor], params: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        names = list(grads)
        copies = {n: params[n].detach().clone().requires_grad_(True) for n in names}
        for n in names:
            copies[n].grad = grads[n].detach().clone()
        optimizer, _ = build_optimizer(self.spec, [names], copies)
        for n in names:
            if self.state.get(n):
                optimizer.state[copies[n]] = _state_copy(self.state[n])
        for group in optimizer.param_groups:
            group["lr"] = 1.0
        optimizer.step()
        return {n: params[n].detach() - copies[n].detach() for n in names}

    def _step(self, name: str, s: OptimizerSpec, g: Tensor, theta: Tensor) -> Tensor:
        state = self.state.get(name, {})
        if s.name == "sgd":
            return g
        if s.name == "momentum":
            if not state:
                return g
            buf = s.momentum * _t(state["momentum_buffer"], g) + (1 - s.dampening) * g
            return g + s.momentum * buf if s.nesterov else buf
        beta1, beta2 = s.betas
        if state:
            t = float(state["step"]) + 1
            m = beta1 * _t(state["exp_avg"], g) + (1 - beta1) * g
            v = beta2 * _t(state["exp_avg_sq"], g) + (1 - beta2) * g.square()
            u: Tensor = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + s.eps)
        else:
            if not self._sq_count:
                raise RuntimeError("observe() the direction batches before asking for Adam steps")
            v = self._sq_sum[name] / self._sq_count
            u = g / (v.sqrt() + s.eps)
        if s.name == "adamw" and s.weight_decay:
            u = u + s.weight_decay * theta
        return u


def _state_copy(entries: Mapping[str, Tensor | float]) -> dict[str, Tensor]:
    return {
        k: v.detach().clone() if isinstance(v, Tensor) else torch.tensor(float(v))
        for k, v in entries.items()
    }


def _t(value: Tensor | float, like: Tensor) -> Tensor:
    return torch.as_tensor(value).to(device=like.device, dtype=like.dtype)
