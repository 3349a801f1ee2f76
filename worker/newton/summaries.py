"""Exact first, second and third derivatives of the loss along a step, restricted to groups."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lrprobe.worker.newton.errors import NumericalError
from lrprobe.worker.newton.microbatches import run_halving
from lrprobe.worker.newton.norms import PrimitiveNorms
from lrprobe.worker.newton.partition import Group
from lrprobe.worker.newton.precision import (
    PRECISIONS,
    Precision,
    float32_derivatives,
    has_half,
    upcast,
)
from lrprobe.worker.newton.state import preserved

LossFn = Callable[[nn.Module, Any], Tensor]


@dataclass(frozen=True)
class Summaries:
    """The restricted Taylor data of ``f(η) = L(θ − Σ_s η_s u_s)`` at ``η = 0`` (float64, CPU).

    Attributes:
        g: (S,) ``ḡ_s = ⟨∇L|_s, u_s⟩ = −∂f/∂η_s``.
        H: (S, S) ``H̄_st = u_sᵀ ∇²L u_t = ∂²f/∂η_s∂η_t``, symmetric.
        d3: (S,) ``D̄_sss = ∇³L[u_s, u_s, u_s] = −∂³f/∂η_s³``, or None if not computed.
        loss: ``L(θ)`` on the batch.
        u_sq_norm: (S,) ``‖u_s‖²``, to turn ``H̄_ss`` into a Rayleigh quotient.
        group_names: the groups' names, in order.
        d3_total: ``∇³L[u, u, u]`` for the whole direction (the single-group problem), if asked.
        micro_batch: the micro-batch size the passes ran at (None: the whole batch); smaller
            than asked when memory ran out, so that the next call can start there.
    """

    g: Tensor
    H: Tensor
    d3: Tensor | None = None
    loss: float = math.nan
    u_sq_norm: Tensor | None = None
    group_names: tuple[str, ...] = ()
    d3_total: float | None = None
    micro_batch: int | None = None

    @property
    def size(self) -> int:
        return int(self.g.shape[0])


def summaries(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    direction: Mapping[str, Tensor],
    groups: Sequence[Group],
    third_order: bool = True,
    *,
    total_third_order: bool = False,
    seed: int | None = 0,
    micro_batch: int | None = None,
    precision: Precision = "float32",
) -> Summaries:
    """Compute ``ḡ``, ``H̄`` and the diagonal of ``D̄`` for one batch (docs/method.md §1.2).

    Route: one forward, the gradient with ``create_graph``, then for each group ``i`` one
    Hessian-vector product of ``ḡ_i`` restricted to the groups ``j ≥ i`` (autograd then runs only
    the part of the graph that reaches those parameters, so rows get cheaper down the list) and,
    for ``d3``, one more reverse pass of ``H̄_ii`` w.r.t. group ``i``. Plain reverse mode only:
    vmapped ``torch.func`` transforms are wrong through ``layer_norm`` in torch 2.13; and with
    third derivatives, normalisation layers run as primitive ops (see
    :mod:`lrprobe.worker.newton.norms`).

    Args:
        model: the model at the checkpoint ``θ``; it is not modified (parameters, buffers, RNG,
            ``.grad``).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batch: passed to ``loss_fn`` as is.
        direction: the step ``u`` that gets subtracted, keyed by parameter name.
        groups: from :func:`partition`; all their parameters must require grad.
        third_order: also compute ``d3`` (costs about as much again as ``H̄``).
        total_third_order: also compute ``∇³L[u, u, u]`` for the whole direction.
        seed: RNG seed for the forward (dropout masks); None keeps the current stream.
        micro_batch: run the passes on micro-batches of at most this many examples and
            accumulate (exact for a loss that is a mean over examples, see
            :mod:`lrprobe.worker.newton.microbatches`); None: the whole batch. Either way, a
            pass that runs out of memory is run again at half the micro-batch.
        precision: ``"float32"`` (the default): half-precision parameters, buffers and inputs
            are upcast and autocast and TF32 are off during the passes
            (:mod:`lrprobe.worker.newton.precision`); float32 and float64 models keep their
            dtype. ``"model"``: the model's own dtype and the caller's autocast.

    Raises:
        ValueError: missing or mis-shaped direction entries, unknown or frozen parameters, a loss
            that is not a scalar or does not depend on the parameters.
        NumericalError: the loss is not finite.
        OutOfMemoryProbeError: the passes do not fit in memory even one example at a time.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if micro_batch is not None and micro_batch < 1:
        raise ValueError(f"micro_batch must be at least 1, got {micro_batch}")
    wanted = float32_derivatives(model) if precision == "float32" else nullcontext()
    with wanted:
        if precision == "float32" and has_half(model):
            batch = upcast(batch)
        tensors, dirs = _aligned(groups, dict(model.named_parameters()), direction)

        def accumulate(chunks: Sequence[tuple[Any, float]]) -> _Taylor:
            total = _Taylor.zero(len(groups), third_order)
            for k, (chunk, weight) in enumerate(chunks):
                # The first micro-batch keeps the batch's seed: one micro-batch is the batch.
                chunk_seed = None if seed is None else seed + _CHUNK_SEED * k
                part = _taylor(
                    model, loss_fn, chunk, tensors, dirs, third_order, total_third_order,
                    chunk_seed,
                )  # fmt: skip
                total.add(part, weight)
            return total

        taylor, fitted = run_halving(batch, micro_batch, accumulate, "the summaries")
        u_sq_norm = torch.stack([_dot(u, u) for u in dirs]).to(torch.float64).cpu()
    return Summaries(
        g=taylor.g,
        H=taylor.H,
        d3=taylor.d3,
        loss=taylor.loss,
        u_sq_norm=u_sq_norm,
        group_names=tuple(g.name for g in groups),
        d3_total=taylor.d3_total if total_third_order else None,
        micro_batch=fitted,
    )


# Seeds of the micro-batches' dropout masks after the first, kept apart from the batch seeds.
_CHUNK_SEED = 1_000_003


@dataclass
class _Taylor:
    """Float64 sums of the summaries over micro-batches, each weighted by its share."""

    g: Tensor
    H: Tensor
    d3: Tensor | None
    loss: float = 0.0
    d3_total: float = 0.0

    @classmethod
    def zero(cls, S: int, third_order: bool) -> _Taylor:
        d3 = torch.zeros(S, dtype=torch.float64) if third_order else None
        return cls(torch.zeros(S, dtype=torch.float64), torch.zeros(S, S, dtype=torch.float64), d3)

    def add(self, part: _Taylor, weight: float) -> None:
        self.g += weight * part.g
        self.H += weight * part.H
        if self.d3 is not None and part.d3 is not None:
            self.d3 += weight * part.d3
        self.loss += weight * part.loss
        self.d3_total += weight * part.d3_total


def _taylor(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    tensors: list[list[Tensor]],
    dirs: list[list[Tensor]],
    third_order: bool,
    total_third_order: bool,
    seed: int | None,
) -> _Taylor:
    """The summaries of one (micro-)batch: the passes described in :func:`summaries`."""
    flat = [p for grp in tensors for p in grp]
    starts = [0]
    for grp in tensors:
        starts.append(starts[-1] + len(grp))
    S = len(tensors)
    exact_norms = PrimitiveNorms() if third_order or total_third_order else nullcontext()
    # Fused attention kernels (flash, memory-efficient) have no second derivative on a GPU;
    # the math kernel is plain differentiable ops, in the passes' own precision.
    with preserved(model, seed), torch.enable_grad(), exact_norms, sdpa_kernel(SDPBackend.MATH):
        loss = loss_fn(model, batch)
        check_loss(loss)
        grads = torch.autograd.grad(
            loss, flat, create_graph=True, allow_unused=True, materialize_grads=True
        )
        gbar = [_dot(grads[starts[i] : starts[i + 1]], dirs[i]) for i in range(S)]
        h_entries: dict[tuple[int, int], Tensor] = {}
        d3_entries: dict[int, Tensor] = {}
        for i in range(S):
            if not gbar[i].requires_grad:  # the loss does not depend on this group
                continue
            row = torch.autograd.grad(
                gbar[i],
                flat[starts[i] :],
                retain_graph=True,
                create_graph=third_order,
                allow_unused=True,
            )
            hii = _dot(row[: len(tensors[i])], dirs[i])
            h_entries[i, i] = hii.detach()
            with torch.no_grad():
                for j in range(i + 1, S):
                    lo, hi = starts[j] - starts[i], starts[j + 1] - starts[i]
                    h_entries[i, j] = _dot(row[lo:hi], dirs[j])
            if third_order and hii.requires_grad:
                third = torch.autograd.grad(hii, tensors[i], retain_graph=True, allow_unused=True)
                d3_entries[i] = _dot(third, dirs[i]).detach()
        d3_total = _total_third(gbar, flat, dirs) if total_third_order else 0.0
        g = torch.stack([v.detach() for v in gbar]).to(torch.float64).cpu()
        value = float(loss.detach())
    H = torch.zeros(S, S, dtype=torch.float64)
    for (i, j), entry in _to_cpu64(h_entries).items():
        H[i, j] = H[j, i] = entry
    d3 = None
    if third_order:
        d3 = torch.zeros(S, dtype=torch.float64)
        for i, entry in _to_cpu64(d3_entries).items():
            d3[i] = entry
    return _Taylor(g, H, d3, value, d3_total)


def _aligned(
    groups: Sequence[Group], params: Mapping[str, Tensor], direction: Mapping[str, Tensor]
) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
    """Parameters and direction tensors in group order; validates names and shapes early."""
    names = [n for g in groups for n in g.param_names]
    if not groups or not names:
        raise ValueError("no groups (or only empty groups) were given")
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"groups name parameters the model does not have: {unknown[:5]}")
    frozen = [n for n in names if not params[n].requires_grad]
    if frozen:
        raise ValueError(f"groups contain frozen parameters (requires_grad=False): {frozen[:5]}")
    missing = [n for n in names if n not in direction]
    if missing:
        raise ValueError(f"the direction has no entry for parameters: {missing[:5]}")
    bad = [
        f"{n}: expected {tuple(params[n].shape)}, got {tuple(direction[n].shape)}"
        for n in names
        if direction[n].shape != params[n].shape
    ]
    if bad:
        raise ValueError(f"direction shapes do not match the parameters: {bad[:5]}")
    tensors = [[params[n] for n in g.param_names] for g in groups]
    dirs = [
        [direction[n].detach().to(device=params[n].device, dtype=params[n].dtype) for n in names]
        for names in (g.param_names for g in groups)
    ]
    return tensors, dirs


def check_loss(loss: Tensor) -> None:
    """A finite scalar that depends on the parameters, or a clear error."""
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError("loss_fn must return a scalar tensor (a batch mean)")
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on any trainable parameter of the groups")
    if not torch.isfinite(loss.detach()):
        raise NumericalError(
            "non_finite_loss", f"the loss is {float(loss.detach())} at the checkpoint"
        )


def _dot(xs: Sequence[Tensor | None], ys: Sequence[Tensor]) -> Tensor:
    """Σ_k ⟨x_k, y_k⟩ over matching tensors; None entries (unreached parameters) count as 0."""
    terms = [torch.sum(x * y) for x, y in zip(xs, ys, strict=True) if x is not None]
    if not terms:
        return torch.zeros((), dtype=ys[0].dtype, device=ys[0].device)
    return terms[0] if len(terms) == 1 else torch.stack(terms).sum()


def _total_third(gbar: list[Tensor], flat: list[Tensor], dirs: list[list[Tensor]]) -> float:
    """``∇³L[u, u, u]`` for the whole direction, reusing the gradient's graph."""
    all_dirs = [u for grp in dirs for u in grp]
    total = torch.stack(gbar).sum()
    if not total.requires_grad:
        return 0.0
    row = torch.autograd.grad(total, flat, retain_graph=True, create_graph=True, allow_unused=True)
    curvature = _dot(row, all_dirs)
    if not curvature.requires_grad:
        return 0.0
    third = torch.autograd.grad(curvature, flat, retain_graph=True, allow_unused=True)
    return float(_dot(third, all_dirs).detach().double())


def _to_cpu64(entries: dict[Any, Tensor]) -> dict[Any, float]:
    """One device→host copy for all scalars (a sync per scalar would stall a GPU)."""
    if not entries:
        return {}
    values = torch.stack(list(entries.values())).to(torch.float64).cpu().tolist()
    return dict(zip(entries.keys(), values, strict=True))
