"""The step ``u`` the user's optimizer would take next (with lr = 1); docs/method.md §1.3.

η multiplies ``u``, so a probe along the optimizer's own direction yields learning rates for that
optimizer. Nothing here commits optimizer state: buffers are read, never written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

OptimizerName = Literal["sgd", "momentum", "adam", "adamw"]
ParamState = Mapping[str, Mapping[str, Tensor | float]]
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "adamw")


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer the user will train with; hyperparameters follow ``torch.optim``."""

    name: OptimizerName = "sgd"
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}: use one of {', '.join(OPTIMIZERS)}")
        if not 0 <= self.momentum < 1 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError("momentum and betas must lie in [0, 1)")
        if self.eps <= 0 or self.weight_decay < 0:
            raise ValueError("eps must be > 0 and weight_decay ≥ 0")

    @classmethod
    def parse(cls, value: str | OptimizerSpec) -> OptimizerSpec:
        return value if isinstance(value, OptimizerSpec) else cls(name=value)  # type: ignore[arg-type]


def from_torch(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[OptimizerSpec, dict]:
    """The spec and the per-parameter state (keyed by parameter name) of a live optimizer."""
    hyper = optimizer.param_groups[0]
    if isinstance(optimizer, torch.optim.AdamW | torch.optim.Adam):
        name: OptimizerName = "adamw" if isinstance(optimizer, torch.optim.AdamW) else "adam"
        spec = OptimizerSpec(
            name=name, betas=tuple(hyper["betas"]), eps=hyper["eps"],
            weight_decay=hyper["weight_decay"],
        )  # fmt: skip
    elif isinstance(optimizer, torch.optim.SGD):
        spec = OptimizerSpec(
            name="momentum" if hyper["momentum"] > 0 else "sgd",
            momentum=hyper["momentum"] or 0.9,
            dampening=hyper["dampening"],
            nesterov=hyper["nesterov"],
            weight_decay=hyper["weight_decay"],
        )
    else:
        raise ValueError(
            f"{type(optimizer).__name__} is not supported: use SGD, Adam or AdamW, "
            "or pass optimizer='sgd'|'momentum'|'adam'|'adamw'"
        )
    ignored = ("params", "lr", "initial_lr", "name")
    for group in optimizer.param_groups[1:]:
        if any(group.get(k) != v for k, v in hyper.items() if k not in ignored):
            raise ValueError("parameter groups with different hyperparameters are not supported")
    names = {id(p): n for n, p in model.named_parameters()}
    state = {names[id(p)]: dict(s) for p, s in optimizer.state.items() if id(p) in names}
    return spec, state


class DirectionRule:
    """Builds ``u`` from a gradient, with the checkpoint's optimizer state when there is one."""

    def __init__(self, spec: OptimizerSpec, state: ParamState | None, names: list[str]) -> None:
        self.spec = spec
        state = state or {}
        if spec.name == "momentum":
            key = ("momentum_buffer",)
        elif spec.name in ("adam", "adamw"):
            key = ("exp_avg", "exp_avg_sq", "step")
        else:
            key = ()
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
        return self.spec.name in ("adam", "adamw") and not self.state

    @property
    def description(self) -> str:
        saved = "checkpoint state" if self.state else "no saved state"
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
        s = self.spec
        out = {}
        for name, grad in grads.items():
            theta = params[name].detach()
            g = grad.detach()
            if s.weight_decay and s.name != "adamw":
                g = g + s.weight_decay * theta
            out[name] = self._step(name, g, theta)
        return out

    def _step(self, name: str, g: Tensor, theta: Tensor) -> Tensor:
        s = self.spec
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
            u = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + s.eps)
        else:
            if not self._sq_count:
                raise RuntimeError("observe() the direction batches before asking for Adam steps")
            v = self._sq_sum[name] / self._sq_count
            u = g / (v.sqrt() + s.eps)
        if s.name == "adamw" and s.weight_decay:
            u = u + s.weight_decay * theta
        return u


def _t(value: Tensor | float, like: Tensor) -> Tensor:
    return torch.as_tensor(value).to(device=like.device, dtype=like.dtype)
