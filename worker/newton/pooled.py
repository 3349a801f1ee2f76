"""Summaries pooled two ways: averaged over batches, and summed over groups into the
single-group (S = 1) problem along the same direction."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lrprobe.worker.newton.errors import NumericalError
from lrprobe.worker.newton.solve import solve
from lrprobe.worker.newton.summaries import Summaries


def mean_summaries(items: Sequence[Summaries]) -> Summaries:
    """The average of summaries evaluated on several batches (same groups, same options)."""
    first = items[0]
    d3_total = [s.d3_total for s in items]
    return Summaries(
        g=torch.stack([s.g for s in items]).mean(0),
        H=torch.stack([s.H for s in items]).mean(0),
        d3=None if first.d3 is None else torch.stack([s.d3 for s in items]).mean(0),  # type: ignore[misc]
        loss=sum(s.loss for s in items) / len(items),
        u_sq_norm=torch.stack([s.u_sq_norm for s in items]).mean(0),  # type: ignore[misc]
        group_names=first.group_names,
        d3_total=None if None in d3_total else sum(d3_total) / len(items),  # type: ignore[arg-type]
    )


def single_group(s: Summaries) -> Summaries:
    """The S = 1 problem along the same u: ḡ and H̄ are sums (docs/method.md §1.4), D̄ was
    computed."""
    d3 = None if s.d3_total is None else torch.tensor([s.d3_total], dtype=torch.float64)
    return Summaries(g=s.g.sum().reshape(1), H=s.H.sum().reshape(1, 1), d3=d3, loss=s.loss)


def single_eta(s: Summaries, lam_int: float) -> float:
    """η of the S = 1 problem along the same ``u``, as the solver gives it (any sign)."""
    return float(solve(single_group(s), lam_int).eta[0])


def single_rate(mean: Summaries, lam_int: float) -> tuple[float, str | None]:
    """A positive η for one group, and a note when it is not the solver's.

    If the averaged ḡ says the direction does not descend (gradient noise dominates), the
    inverse curvature along u, ‖u‖²/uᵀH̄u, the classic stable step size.

    Raises:
        NumericalError: ``no_descent``, neither the slope nor the curvature is positive.
    """
    single = single_group(mean)
    eta = float(solve(single, lam_int).eta[0])
    if eta > 0:
        return eta, None
    u2 = float(mean.u_sq_norm.sum()) if mean.u_sq_norm is not None else math.nan
    curvature = float(single.H[0, 0])
    if curvature > 0 and u2 > 0:
        return u2 / curvature, (
            "the loss did not decrease on average along the optimizer's direction (gradient "
            "noise dominates): the single-group rate is the inverse curvature ‖u‖²/uᵀH̄u; "
            "probe with more or larger batches"
        )
    raise NumericalError(
        "no_descent",
        "neither the slope nor the curvature along the optimizer's direction is positive: "
        "check the loss and labels, or probe with more or larger batches",
    )
