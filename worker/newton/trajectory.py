"""The trajectory probe: a short grouped-Newton run, then a calibrated global scale.

gn-probe/0.3 (issue 11) changed one thing: λ₁ is chosen from {0.03, 0.1, 0.3} instead of
{0.1, 0.3, 1}. What was tried, on the expanded ``bench/quality`` (9 tasks, peers, regret =
the share of the grid's improvement a method misses; see the README's quality section):

- the candidates {0.03, 0.1, 0.3} (kept): the winning λ₁ of a 40-step training-loss contest
  is too large for a 300-step run. On the 54 cells of the 9 tasks (one seed), the worst
  regret fell from 1.00 to 0.52 (cells above 0.15: 7 → 5) for a median of 0.008 instead of
  0.004, and the pinned collapse (``tests/bench/test_no_collapse.py``: a tanh MLP on wine,
  plain SGD, where gn-probe/0.2 gave the head 6.8 and the held-out loss never left chance
  level) is gone. 9 cells got better by more than 0.01 regret (up to 0.79), 9 worse (up to
  0.15: the GPT and the digits CNN with plain SGD or momentum, which want λ₁ near 1). A
  safer worst case for a slightly higher median: the issue puts safety first.
- shrinking each group toward the single-group rate in log space (``shrink=0.5``), tighter
  bounds (3× instead of 10×) and both: re-run on the 8 cells where the per-layer rates did
  worst, each won some cells and lost others by as much (deep ReLU MLP with momentum: 0.52 →
  0.98 with shrink, −0.28 with both; a residual MLP: 0.24 → 0.05 with both, a tanh MLP 0.21 →
  0.34); one seed cannot tell them apart, so neither is the default. ``shrink`` stays an
  option.
- a stability check that falls back to the single-group rate when its 40-step calibration run
  ends lower than the per-layer one: it could not see the pinned collapse (there the per-layer
  run fits the training data *better*; it is the held-out loss that explodes) and was dropped.
- held-out calibration: the probe sees only training batches; on the small data sets where
  the rates overfit (wine: 133 examples), 40 steps of batch 32 revisit every example, so a
  "held-out" batch from the same stream is not held out. Not pursued.

The evidence for the rest of the rule, from issue 3 (``python -m bench.quality``; 4 small tasks ×
{fresh init, warm checkpoint} × {SGD, momentum 0.9, AdamW} × 2 seeds, 300 steps; "ratio" =
best held-out loss / that of the best point of a 7-point grid; median and worst over the 24
cells, selection cost in forward+backward passes):

- fixed-θ probe of docs/method.md §7.1 (K = 8, cubic, held-out λ₁): median 2.07, worst 26.9. The
  one-step optimum at a single θ is a poor long-run rate: coupling drives some groups' η
  negative, others far above what 300 steps tolerate.
- trajectory, published relu only (no bounds), λ₁ = 0.3: 1.56 / 10.3 (a group pinned at 0
  for the whole run never learns; a LayerNorm or embedding group with tiny curvature along
  ``u`` gets 10⁴× the rate of the others and training diverges).
- + single-group η₁ as floor/ceiling (η_s ∈ [η₁/10, 10·η₁]): 1.18 / 10.6; bounds 3: no gain.
- λ₁ fixed at 0.1 / 0.3 / 1: 1.20 / 1.18 / 2.09 — no single λ₁ suits every task and
  optimizer (momentum wants ≤ 0.1, plain SGD on a CNN wants 1).
- + λ₁ calibrated by a 40-step run per candidate {0.1, 0.3, 1} from the checkpoint (lowest
  training loss at the end, same batches): 1.11 / 9.6 with the cubic rule, **1.08 / 3.8 with
  Newton + Levenberg fallback** (the cubic rule's d3 passes double the cost and bought
  nothing along a trajectory that re-solves every 4 steps), 207 passes vs 2,100 for the grid.
- granularity: per tensor 1.37 / 16.6 (bias groups are noise-dominated); a single group 1.09
  / 1.7 (more robust, but no per-layer rates); 20 steps instead of 40: 1.52 / 18.5.
- preferring the smaller of near-equal calibration candidates (within 2–10 %): no change.

On the full benchmark (the tiny GPT added, 3 seeds, 30 cells) this default reaches a median
ratio of 1.08 and a worst of 3.0, within 5 % of the grid in 14 of 30 cells, at 190–362
passes (the grid: 2,100). It does not meet the issue's target everywhere: see the README.

The trajectory copes with what kills the fixed-θ probe because it does what the published
optimizer does (docs/method.md §3.4): re-solve η along its own path with λ₁, relu and an EMA, so
that early curvature changes and noise average out; ``lr_s = λ₁ · median(η̄_s)`` over the second
half of the run. The steps are the user's own ``torch.optim`` optimizer's: ``u`` is read off a
real step at lr = 1 (the update is linear in lr for SGD, heavy ball, Nesterov, Adam and AdamW),
so the optimizer state evolves as in training and the recommended rate multiplies the same
``u`` the user's optimizer will take — no ``1 − β`` conversion for momentum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lrprobe.worker.newton.directions import OptimizerSpec, ParamState, build_optimizer
from lrprobe.worker.newton.errors import NumericalError
from lrprobe.worker.newton.microbatches import accumulated_backward
from lrprobe.worker.newton.partition import Group
from lrprobe.worker.newton.precision import Precision
from lrprobe.worker.newton.solve import solve
from lrprobe.worker.newton.state import scratch
from lrprobe.worker.newton.summaries import LossFn, Summaries, check_loss, summaries


@dataclass(frozen=True)
class Trajectory:
    """What a short grouped-Newton run saw, one entry per evaluation of the summaries.

    ``etas``: (E, S) raw η (cubic rule); ``smoothed``: (E, S) η̄ after relu and the EMA, i.e.
    the multipliers the run used; ``single``: (E,) the S = 1 rate along the same ``u``;
    ``summaries``: per evaluation; ``losses``: training loss at every step (direction batch);
    ``steps``: optimizer steps taken; ``diverged``: the loss stopped being finite.
    """

    etas: Tensor
    smoothed: Tensor
    single: Tensor
    summaries: list[Summaries]
    losses: list[float]
    steps: int
    diverged: bool = False

    def tail(self) -> slice:
        """The evaluations the recommendation is read from: the second half of the run."""
        E = self.etas.shape[0]
        return slice(E // 2, E) if E > 1 else slice(0, E)


def run_trajectory(
    model: nn.Module,
    loss_fn: LossFn,
    direction_batches: Sequence[Any],
    summary_batches: Sequence[Any],
    spec: OptimizerSpec,
    groups: Sequence[Group],
    *,
    optimizer_state: ParamState | None,
    scale: float,
    period: int,
    lam_int: float,
    third_order: bool,
    smoothing: float,
    bounds: float | None,
    seed: int,
    on_step: Callable[[Summaries | None], None],
    fb_timer: Callable[[], AbstractContextManager[None]],
    micro_batch: int | None = None,
    precision: Precision = "float32",
) -> Trajectory:
    """Take ``len(direction_batches)`` optimizer steps on a copy of ``model`` with per-group
    rates ``scale · η̄``, re-solving η every ``period`` steps on the next summary batch.

    ``model`` itself is trained and put back bit for bit at the end (:func:`scratch`: no second
    copy of the model on its device; the caller restores RNG state). Steps accumulate gradients
    over micro-batches of ``micro_batch`` examples and the summaries run at ``micro_batch`` and
    ``precision`` (:func:`summaries`); a smaller micro-batch that memory forced is kept.
    ``bounds`` = b keeps each η_s within [η₁/b, b·η₁] of the single-group η₁ of the same
    evaluation (None: the published relu only). ``on_step`` is called after each step with the
    summaries when they were evaluated;
    ``fb_timer`` wraps each forward+backward (the probe's cost unit). A run whose loss stops
    being finite ends there (``diverged``); a non-finite loss at the checkpoint itself raises.
    """
    with scratch(model) as work:
        return _run(
            work, loss_fn, direction_batches, summary_batches, spec, groups,
            optimizer_state=optimizer_state, scale=scale, period=period, lam_int=lam_int,
            third_order=third_order, smoothing=smoothing, bounds=bounds, seed=seed,
            on_step=on_step, fb_timer=fb_timer, micro_batch=micro_batch, precision=precision,
        )  # fmt: skip


def _run(
    work: nn.Module,
    loss_fn: LossFn,
    direction_batches: Sequence[Any],
    summary_batches: Sequence[Any],
    spec: OptimizerSpec,
    groups: Sequence[Group],
    *,
    optimizer_state: ParamState | None,
    scale: float,
    period: int,
    lam_int: float,
    third_order: bool,
    smoothing: float,
    bounds: float | None,
    seed: int,
    on_step: Callable[[Summaries | None], None],
    fb_timer: Callable[[], AbstractContextManager[None]],
    micro_batch: int | None,
    precision: Precision,
) -> Trajectory:
    params = dict(work.named_parameters())
    optimizer, owner = build_optimizer(spec, [g.param_names for g in groups], params)
    if optimizer_state:
        _load_state(optimizer, params, optimizer_state)
    trained = [params[n] for g in groups for n in g.param_names]
    S = len(groups)
    smoothed = torch.zeros(S, dtype=torch.float64)
    etas: list[Tensor] = []
    history: list[Tensor] = []
    singles: list[float] = []
    evaluated: list[Summaries] = []
    losses: list[float] = []
    diverged = False
    for t, batch in enumerate(direction_batches):
        torch.manual_seed(seed + t)  # dropout masks of the step: reproducible for a seed
        optimizer.zero_grad(set_to_none=True)
        with fb_timer():
            loss, micro_batch = accumulated_backward(
                loss_fn, work, batch, trained, micro_batch, check_loss if t == 0 else None
            )
            if t == 0:
                start = float(loss)
            elif not bool(torch.isfinite(loss)) or _blew_up(float(loss), start):
                diverged = True
                break
        losses.append(float(loss))
        s = None
        if t % period == 0 and t // period < len(summary_batches):
            u = _unit_step(optimizer, params)  # commits the optimizer state, restores θ
            # The step is in u now: the gradients would only add one model's worth of memory
            # to the summaries' peak.
            optimizer.zero_grad(set_to_none=True)
            try:
                s = summaries(
                    work, loss_fn, summary_batches[t // period], u, groups, third_order,
                    total_third_order=third_order, seed=seed + 7919 + t,
                    micro_batch=micro_batch, precision=precision,
                )  # fmt: skip
                micro_batch = s.micro_batch
            except NumericalError:
                if t == 0:
                    raise
                diverged = True
                break
            if not _finite(s):
                if t == 0:
                    raise NumericalError(
                        "non_finite_summaries",
                        "derivatives of the loss are not finite at the checkpoint",
                    )
                diverged = True
                break
            solution = solve(s, lam_int)
            eta = solution.eta
            single = _single_eta(s, lam_int)
            bounded = _bounded(eta, single, bounds)
            bounded[list(solution.dropped)] = 0.0  # groups that do not move the loss stay put
            # The published order (docs/method.md §3.4): relu, then the EMA, first evaluation
            # unsmoothed.
            rho = smoothing if etas else 0.0
            smoothed = rho * smoothed + (1 - rho) * bounded
            etas.append(eta)
            history.append(smoothed.clone())
            singles.append(single)
            evaluated.append(s)
            with torch.no_grad():
                for i, group in enumerate(groups):
                    for n in group.param_names:
                        params[n].sub_(scale * float(smoothed[i]) * u[n])
        else:
            for i, param_group in zip(owner, optimizer.param_groups, strict=True):
                param_group["lr"] = scale * float(smoothed[i])
            optimizer.step()
        on_step(s)
    return Trajectory(
        etas=torch.stack(etas),
        smoothed=torch.stack(history),
        single=torch.tensor(singles, dtype=torch.float64),
        summaries=evaluated,
        losses=losses,
        steps=len(losses),
        diverged=diverged,
    )


# A trajectory whose training loss grows past this multiple of its starting value has
# diverged even if the loss stays finite: a saturated tanh network keeps a finite loss while
# its curvature vanishes and η explodes (seen on the README's digits MLP for 3 seeds of 6).
DIVERGENCE_FACTOR = 10.0


def _blew_up(loss: float, start: float) -> bool:
    return start != 0 and loss - start > DIVERGENCE_FACTOR * abs(start)


def _unit_step(optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``u`` = the optimizer's step at lr = 1 for the gradients in ``.grad``; θ is restored.

    The optimizer state advances as it would in training: the step is taken right after, with
    the same gradient, as ``θ − lr_s · u``, which is what the optimizer would do at ``lr_s``.
    """
    before = {n: p.detach().clone() for n, p in params.items()}
    for group in optimizer.param_groups:
        group["lr"] = 1.0
    optimizer.step()
    u = {}
    with torch.no_grad():
        for n, p in params.items():
            u[n] = before[n] - p.detach()
            p.copy_(before[n])
    return u


def _single_eta(s: Summaries, lam_int: float) -> float:
    """η of the S = 1 problem along the same ``u`` (sums of the summaries, docs/method.md §1.4)."""
    d3 = None if s.d3_total is None else torch.tensor([s.d3_total], dtype=torch.float64)
    single = Summaries(g=s.g.sum().reshape(1), H=s.H.sum().reshape(1, 1), d3=d3, loss=s.loss)
    return float(solve(single, lam_int).eta[0])


def _load_state(
    optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor], state: ParamState
) -> None:
    for name, entries in state.items():
        if name in params:
            optimizer.state[params[name]] = {
                k: v.detach().clone() if isinstance(v, Tensor) else torch.tensor(float(v))
                for k, v in entries.items()
            }


def _finite(s: Summaries) -> bool:
    values = [s.g, s.H] + ([s.d3] if s.d3 is not None else [])
    total = s.d3_total if s.d3_total is not None else 0.0
    return all(bool(torch.isfinite(v).all()) for v in values) and abs(total) < float("inf")


def _bounded(eta: Tensor, single: float, bounds: float | None) -> Tensor:
    """relu (docs/method.md §3.4), then, with ``bounds``, the single-group η as a floor/ceiling: a
    group that coupling drives negative still learns, and a group with tiny curvature along ``u``
    (LayerNorm gains, embeddings) cannot take a step the whole model would not survive."""
    eta = eta.clamp(min=0)
    if bounds is None or not single > 0:
        return eta
    return eta.clamp(min=single / bounds, max=single * bounds)


def calibration_losses(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    spec: OptimizerSpec,
    groups: Sequence[Group],
    rates: Sequence[float],
    *,
    optimizer_state: ParamState | None,
    seed: int,
    fb_timer: Callable[[], AbstractContextManager[None]],
    micro_batch: int | None = None,
) -> list[float]:
    """Training losses of a short run of the user's optimizer from the checkpoint with the
    per-group ``rates``, on ``batches`` (the same batches for every candidate, so that the
    comparison between candidates is not drowned in batch noise). Stops at a non-finite loss.
    ``model`` is trained in place and put back (:func:`scratch`); steps accumulate gradients
    over micro-batches of ``micro_batch`` examples."""
    with scratch(model) as work:
        return _calibrate(
            work, loss_fn, batches, spec, groups, rates, optimizer_state=optimizer_state,
            seed=seed, fb_timer=fb_timer, micro_batch=micro_batch,
        )  # fmt: skip


def _calibrate(
    work: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    spec: OptimizerSpec,
    groups: Sequence[Group],
    rates: Sequence[float],
    *,
    optimizer_state: ParamState | None,
    seed: int,
    fb_timer: Callable[[], AbstractContextManager[None]],
    micro_batch: int | None,
) -> list[float]:
    params = dict(work.named_parameters())
    trained = [params[n] for g in groups for n in g.param_names]
    optimizer, owner = build_optimizer(spec, [g.param_names for g in groups], params)
    if optimizer_state:
        _load_state(optimizer, params, optimizer_state)
    for group, index in zip(optimizer.param_groups, owner, strict=True):
        group["lr"] = rates[index]
    losses = []
    for t, batch in enumerate(batches):
        torch.manual_seed(seed + t)
        optimizer.zero_grad(set_to_none=True)
        with fb_timer():
            loss, micro_batch = accumulated_backward(loss_fn, work, batch, trained, micro_batch)
            value = float(loss)
            losses.append(value)
            if not value < float("inf"):  # also catches NaN
                break
        optimizer.step()
    return losses
