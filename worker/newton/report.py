"""The parts of a :class:`ProbeResult` both methods derive the same way from what they
measured: one :class:`GroupResult` per group, the model's fields, the solver's notes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lrprobe.worker.newton.partition import Group
from lrprobe.worker.newton.result import GroupResult, Spread
from lrprobe.worker.newton.solve import Solution, SolveStatus, cubic_model
from lrprobe.worker.newton.summaries import Summaries


def group_results(
    groups: Sequence[Group],
    params: Mapping[str, Tensor],
    samples: Sequence[Summaries],
    mean: Summaries,
    solution: Solution,
    newton: Solution,
    *,
    eta: Tensor,
    eta_interval: Tensor,
    eta_samples: Tensor,
    negative: Tensor,
    factor: float,
    single_lr: float,
    single_interval: tuple[float, float],
    flag_low_snr: bool,
) -> list[GroupResult]:
    """One result per group, its learning rate ``factor · η_s``.

    Args:
        samples: the N summaries the mean was taken over (the slope's spread comes from them).
        mean: their average; ``solution`` and ``newton`` solve it with the method's λ_int and 0.
        eta: (S,) the η each group's rate is read from.
        eta_interval: (S, 2) the 10–90 % interval of ``eta``.
        eta_samples: (N, S) raw η per sample: the spread's median, IQR and negative share.
        negative: (S,) bool, the groups flagged ``negative`` (each method has its own rule).
        single_lr, single_interval: what a group whose η is not positive gets instead.
        flag_low_snr: whether a slope within two standard errors of 0 raises ``low_snr``.
    """
    slopes = torch.stack([s.g for s in samples])
    quartiles = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    results = []
    for i, group in enumerate(groups):
        point = float(eta[i])
        lo, hi = float(eta_interval[i, 0]), float(eta_interval[i, 1])
        h, g = float(mean.H[i, i]), float(mean.g[i])
        std = float(slopes[:, i].std()) if slopes.shape[0] > 1 else math.nan
        column = eta_samples[:, i]
        flags: list[str] = []
        if i in solution.dropped:
            flags.append("unused")
        elif bool(negative[i]):
            flags.append("negative")
        if lo <= 0 < point:
            flags.append("noisy")
        if flag_low_snr and _low_snr(g, std, slopes.shape[0]):
            flags.append("low_snr")
        if point > 0:
            lr, lr_interval = factor * point, (factor * lo, factor * hi)
        else:
            # A group the method leaves at η ≤ 0 would not learn at all, the worst possible
            # advice for a layer: it gets the single-group rate instead.
            lr, lr_interval = single_lr, single_interval
            if i not in solution.dropped:
                flags.append("fallback_global")
        q25, q50, q75 = torch.quantile(column, quartiles).tolist()
        u2 = float(mean.u_sq_norm[i]) if mean.u_sq_norm is not None else math.nan
        results.append(
            GroupResult(
                name=group.name,
                param_names=group.param_names,
                numel=sum(params[n].numel() for n in group.param_names),
                lr=lr,
                lr_interval=lr_interval,
                eta=point,
                eta_interval=(lo, hi),
                eta_newton=float(newton.eta[i]) if newton.status == SolveStatus.NEWTON else None,
                eta_diagonal=g / h if h > 0 else None,
                g=g,
                g_snr=abs(g) / std if std > 0 else math.inf,
                h=h,
                curvature=h / u2 if u2 > 0 else math.nan,
                d3=None if mean.d3 is None else float(mean.d3[i]),
                spread=Spread(
                    median=q50,
                    iqr=q75 - q25,
                    negative_fraction=float((column < 0).double().mean()),
                ),
                flags=tuple(flags),
            )
        )
    return results


def _low_snr(g: float, std: float, n: int) -> bool:
    """The mean slope ḡ_s is within two standard errors of 0. (gn-probe/0.2 compared it with
    one batch's spread instead, which flagged almost every group of every probe: one batch's
    slope is always noisy, and the probe averages n of them.)"""
    return std > 0 and n > 1 and abs(g) / (std / math.sqrt(n)) < 2


def model_fields(
    mean: Summaries,
    solution: Solution,
    newton: Solution,
    eta: Tensor,
    realised_at_scale: float | None,
) -> dict[str, Any]:
    """The ProbeResult fields both methods derive from the averaged summaries they solved."""
    return {
        "status": solution.status.value,
        "loss": mean.loss,
        "hessian_eigenvalues": [float(v) for v in torch.linalg.eigvalsh(mean.H)],
        "coupling": _coupling(mean.H),
        "predicted_decrease": {
            "cubic": solution.model_value,
            "quadratic_at_eta": cubic_model(mean.H, mean.g, None, eta),
            "newton": newton.model_value if newton.status == SolveStatus.NEWTON else None,
            "realised_at_scale": realised_at_scale,
        },
    }


def solver_notes(solution: Solution) -> list[str]:
    if solution.status in (SolveStatus.CUBIC, SolveStatus.NEWTON):
        return []
    # The trajectory solves Newton (lam_int 0), the fixed-θ probe the cubic rule: name the one used.
    rule = "the cubic rule" if solution.lam_int > 0 else "Newton's step"
    return [f"{rule} fell back to {solution.status.value}"]


def _coupling(H: Tensor) -> list[list[float]]:
    """``H̄_st / sqrt(|H̄_ss H̄_tt|)``: scale-free cross-group coupling (0 where a group is idle)."""
    scale = H.diagonal().abs().sqrt()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    C = H / safe[:, None] / safe[None, :]
    C[scale == 0, :] = 0
    C[:, scale == 0] = 0
    return C.tolist()
