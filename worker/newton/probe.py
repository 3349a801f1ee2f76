"""The short grouped-Newton probe of docs/method.md §7: from a checkpoint to one learning rate
per group."""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lrprobe.worker.newton.directions import DirectionRule, OptimizerSpec, ParamState, from_torch
from lrprobe.worker.newton.errors import NumericalError
from lrprobe.worker.newton.partition import Group, MaxGroups, PartitionRule, partition
from lrprobe.worker.newton.precision import Precision
from lrprobe.worker.newton.result import (
    Cost,
    GroupResult,
    ProbeResult,
    ScaleCheck,
    Spread,
    flag_notes,
)
from lrprobe.worker.newton.solve import Solution, SolveStatus, cubic_model, solve
from lrprobe.worker.newton.state import preserved, shifted
from lrprobe.worker.newton.summaries import LossFn, Summaries, check_loss, summaries
from lrprobe.worker.newton.trajectory import Trajectory, calibration_losses, run_trajectory

Method = Literal["trajectory", "fixed"]
# What a progress tick counts: the fixed method's three phases, the trajectory method's two.
Phase = Literal["second_moment", "summaries", "check", "trajectory", "calibration"]

# A diverging trajectory is run again with rates 10× smaller, at most this many times in all.
_TRAJECTORY_ATTEMPTS = 3
# Offsets that keep the RNG seeds of direction, summary and held-out batches apart.
_SUMMARY_SEED, _HELDOUT_SEED = 100_003, 200_003


@dataclass(frozen=True)
class ProbeProgress:
    done: int
    total: int
    phase: Phase


def probe(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    optimizer: str | OptimizerSpec | torch.optim.Optimizer = "sgd",
    partition: PartitionRule | Sequence[Group] = "layer",
    *,
    method: Method = "trajectory",
    steps: int = 40,
    period: int = 4,
    smoothing: float = 0.5,
    trajectory_scale: float = 0.3,
    bounds: float | None = 10.0,
    calibrate: Sequence[float] = (0.03, 0.1, 0.3),
    calibration_steps: int = 40,
    shrink: float = 0.0,
    num_batches: int = 16,
    heldout_batches: int = 4,
    optimizer_state: ParamState | None = None,
    max_groups: MaxGroups = "auto",
    lam_int: float | None = None,
    third_order: bool | None = None,
    bootstrap: int = 200,
    scales: Sequence[float] = (1.0, 0.3, 0.1, 0.03),
    trust: float = 0.5,
    seed: int = 0,
    progress: Callable[[ProbeProgress], None] | None = None,
    micro_batch: int | None = None,
    precision: Precision = "float32",
) -> ProbeResult:
    """Recommend one learning rate per parameter group for the optimizer the user trains with.

    ``method="trajectory"`` (the default; why: :mod:`lrprobe.worker.newton.trajectory`): on a
    copy of the model, ``steps`` steps of the user's own optimizer with per-group rates
    ``trajectory_scale · η̄``, where η is re-solved every ``period`` steps on an independent
    batch (Newton with a Levenberg fallback by default), clipped to
    ``[η₁/bounds, bounds·η₁]`` around the single-group η₁ and smoothed by an EMA
    (``smoothing``), as the published optimizer does (docs/method.md §3.4). η̄ is the median over the
    second half. λ₁ is then the candidate in ``calibrate`` whose ``calibration_steps``-step run
    from the checkpoint at ``λ₁ · η̄`` ends with the lowest training loss (same batches for
    every candidate); the recommended lr is ``λ₁ · η̄`` and multiplies the optimizer's own step
    (momentum buffer, Adam step), so there is no ``1 − β`` conversion.

    ``method="fixed"`` (docs/method.md §7.1): θ stays fixed. For each of ``num_batches`` pairs, a
    direction batch gives ``u_k`` (the optimizer's next step with lr = 1) and an independent
    summary batch gives ``ḡ_k, H̄_k, d3_k``. Summaries are averaged and the cubic rule solved
    once; a bootstrap over the K summaries gives 10–90 % intervals. Then ``heldout_batches``
    fresh direction/evaluation pairs measure the realised loss change of ``scale · η · u`` for
    each candidate in ``scales``; the largest whose realised decrease is at least ``trust``
    times the quadratic model's prediction becomes λ₁. The recommended lr is
    ``λ₁ · lr_factor · η`` (``lr_factor`` = 1 − β for momentum without a saved buffer, spec
    §7.3).

    With either method a group whose η is not positive falls back to the single-group rate and
    is flagged; a negative learning rate is never recommended.

    Args:
        model: the checkpoint; it comes back unchanged (parameters, buffers, RNG, ``.grad``).
        loss_fn: ``loss_fn(model, batch) -> scalar``.
        batches: yields at least ``steps + ⌈steps/period⌉ + calibration_steps`` batches
            (trajectory) or ``2·num_batches + 2·heldout_batches`` (fixed); more are not read.
            They should be independent draws (see :func:`minibatches`).
        optimizer: a name in :data:`OPTIMIZERS` ("sgd", "momentum", "adam", "adamw",
            "rmsprop", "adagrad", "nadam", "radam", "lion"), an :class:`OptimizerSpec`, or a
            live optimizer of one of those kinds (its hyperparameters, group by group, and its
            state are used, not changed). Each parameter's direction uses its own group's
            hyperparameters. Optimizers whose step is not linear in the learning rate are
            refused (ValueError saying why).
        partition: a rule for :func:`partition` or explicit groups.
        method: "trajectory" or "fixed".
        steps, period, smoothing, trajectory_scale, bounds: the trajectory (see above);
            ``bounds=None`` keeps only the published relu.
        calibrate: candidate λ₁ for the trajectory's recommendation; empty: ``trajectory_scale``.
        calibration_steps: length of each calibration run.
        shrink: pulls each group's η̄ toward the single-group η₁ of the same evaluation, in log
            space: ``η₁^shrink · η̄^(1−shrink)`` (0: none, 1: the single-group rate everywhere).
        num_batches, heldout_batches, bootstrap, scales, trust: the fixed-θ method (see above).
        optimizer_state: per-parameter state keyed by name (``momentum_buffer``; ``exp_avg``,
            ``exp_avg_sq``, ``step``), as saved with the checkpoint.
        max_groups: at most this many groups; ``"auto"`` (the default) caps a named rule at
            :data:`~lrprobe.worker.newton.partition.AUTO_MAX_GROUPS` by coarsening along the
            model's structure (a 12-block transformer is probed per block), None: no cap.
        lam_int: weight of the cubic penalty; 0 gives Newton. Default: 0 for the trajectory,
            1 for the fixed-θ probe.
        third_order: compute ``d3`` (needed for the cubic rule). Default: with ``lam_int > 0``.
        seed: seeds the batches' dropout masks and the bootstrap.
        progress: called after each batch (fixed) or optimizer step (trajectory).
        micro_batch: run every pass on micro-batches of at most this many examples and
            accumulate, so that a batch larger than one pass holds can be probed (exact for a
            loss that is a mean over examples; None: whole batches). Memory that runs out
            halves it, down to one example, before ``out_of_memory``.
        precision: ``"float32"``: derivatives of a bfloat16/float16 model or one run under
            autocast are taken in float32 with TF32 off; the trajectory's steps stay in the
            model's own precision, as in training. ``"model"``: derivatives as the model runs.

    Raises:
        ValueError: too few batches, bad arguments (messages name the offending keys).
        NumericalError: the loss or the summaries are not finite at the checkpoint.
        OutOfMemoryProbeError: even one example at a time does not fit (code ``out_of_memory``).
    """
    started = time.perf_counter()
    if num_batches < 1 or heldout_batches < 1:
        raise ValueError("num_batches and heldout_batches must be at least 1")
    if isinstance(optimizer, torch.optim.Optimizer):
        spec, live_state = from_torch(optimizer, model)
        optimizer_state = optimizer_state if optimizer_state is not None else live_state
    else:
        spec = OptimizerSpec.parse(optimizer)
    groups = (
        list(partition)
        if isinstance(partition, Sequence) and not isinstance(partition, str)
        else _partition(model, partition, max_groups)
    )
    names = [n for g in groups for n in g.param_names]
    params = dict(model.named_parameters())
    unknown = [n for g in spec.param_groups for n in g.params if n not in params]
    if unknown:
        raise ValueError(
            f"the optimizer's parameter groups name parameters the model does not have: "
            f"{unknown[:5]}; use the names of model.named_parameters()"
        )
    rule = DirectionRule(spec, optimizer_state, names)
    device = next(iter(params.values())).device
    if method == "trajectory":
        # Newton with the solver's Levenberg fallback: as good as the cubic rule along the
        # trajectory at half the passes (quality benchmark); the fixed-θ probe keeps cubic.
        lam_int = 0.0 if lam_int is None else lam_int
        third_order = lam_int > 0 if third_order is None else third_order
        return _trajectory_probe(
            model, loss_fn, batches, spec, groups, optimizer_state,
            steps=steps, period=period, smoothing=smoothing, scale=trajectory_scale,
            bounds=bounds, calibrate=calibrate, calibration_steps=calibration_steps,
            shrink=shrink, lam_int=lam_int, third_order=third_order, seed=seed,
            progress=progress, device=device, started=started, micro_batch=micro_batch,
            precision=precision,
        )  # fmt: skip
    if method != "fixed":
        raise ValueError(f"unknown method {method!r}: use 'trajectory' or 'fixed'")
    lam_int = 1.0 if lam_int is None else lam_int
    third_order = True if third_order is None else third_order

    K, J = num_batches, heldout_batches
    drawn = list(itertools.islice(iter(batches), 2 * K + 2 * J))
    if len(drawn) < 2 * K + 2 * J:
        raise ValueError(
            f"the probe needs {2 * K + 2 * J} batches (2 × {K} probe + 2 × {J} held-out), "
            f"the iterable gave {len(drawn)}: pass an endless iterator or lower num_batches"
        )
    direction_batches, summary_batches = drawn[0 : 2 * K : 2], drawn[1 : 2 * K : 2]
    heldout = drawn[2 * K :]
    meter = _Meter(progress, total=K * (2 if rule.needs_second_moment else 1) + J, device=device)

    def gradient(batch: Any, batch_seed: int) -> dict[str, Tensor]:
        with meter.fb(), preserved(model, batch_seed), torch.enable_grad():
            loss = loss_fn(model, batch)
            check_loss(loss)
            grads = torch.autograd.grad(
                loss, [params[n] for n in names], allow_unused=True, materialize_grads=True
            )
        return dict(zip(names, grads, strict=True))

    if rule.needs_second_moment:
        for k, batch in enumerate(direction_batches):
            rule.observe(gradient(batch, seed + k))
            meter.tick("second_moment")
    per_batch: list[Summaries] = []
    for k in range(K):
        u = rule.direction(gradient(direction_batches[k], seed + k), params)
        s = summaries(
            model, loss_fn, summary_batches[k], u, groups, third_order,
            total_third_order=third_order, seed=seed + _SUMMARY_SEED + k,
            micro_batch=micro_batch, precision=precision,
        )  # fmt: skip
        _check_finite(s)
        meter.count_summaries(s, third_order)
        per_batch.append(s)
        meter.tick("summaries")

    mean = _mean(per_batch)
    solution = solve(mean, lam_int)
    single = _single_group(mean)
    eta = solution.eta
    eta_single, single_note = _single_rate(single, mean, lam_int)

    # Held-out check: realised loss change of scale·η·u along fresh directions.
    by_name = {n: float(eta[i]) for i, g in enumerate(groups) for n in g.param_names}
    realised: dict[str, dict[float, list[float]]] = {"groups": {}, "single": {}}
    for j in range(J):
        u = rule.direction(gradient(heldout[2 * j], seed + _HELDOUT_SEED + j), params)
        evaluate = _evaluator(model, loss_fn, heldout[2 * j + 1], seed + 2 * _HELDOUT_SEED + j)
        base = evaluate({}, params, meter)
        for scale in scales:
            for key, rates in (("groups", by_name), ("single", dict.fromkeys(names, eta_single))):
                step = {n: scale * rates[n] * u[n] for n in names}
                realised[key].setdefault(scale, []).append(evaluate(step, params, meter) - base)
        meter.tick("check")
    checks = _checks(mean, eta, realised["groups"], scales)
    single_checks = _checks(single, torch.tensor([eta_single]), realised["single"], scales)
    scale, scale_note = _choose_scale(checks, trust)
    single_scale, _ = _choose_scale(single_checks, trust)

    draws = _bootstrap(per_batch, lam_int, bootstrap, seed)
    factor = rule.lr_factor
    single_lr = single_scale * factor * eta_single
    single_draws = [_single_rate(_single_group(m), m, lam_int)[0] for m in draws["means"]]
    single_interval = _interval(single_draws, single_scale * factor, eta_single)
    per_batch_eta = torch.stack([solve(s, lam_int).eta for s in per_batch])
    newton = solve(mean, 0.0)
    group_results = _group_results(
        groups, params, per_batch, mean, solution, newton, per_batch_eta, draws["etas"],
        scale * factor, single_lr, single_interval, lam_int,
    )  # fmt: skip

    notes = [scale_note] if scale_note else []
    notes += _solver_notes(solution)
    if single_note:
        notes.append(single_note)
    notes += flag_notes(group_results)
    return ProbeResult(
        optimizer=spec.to_dict(),
        direction=rule.description,
        lr_factor=factor,
        scale=scale,
        groups=group_results,
        single_group_lr=single_lr,
        single_group_eta=eta_single,
        single_group_interval=single_interval,
        lam_int=lam_int,
        **_model_fields(mean, solution, newton, eta, _realised_at(checks, scale)),
        scale_checks=checks,
        cost=meter.cost(started, batches=len(drawn)),
        notes=notes,
    )


def _model_fields(
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


def _solver_notes(solution: Solution) -> list[str]:
    if solution.status in (SolveStatus.CUBIC, SolveStatus.NEWTON):
        return []
    return [f"the cubic rule fell back to {solution.status.value}"]


def _partition(model: nn.Module, rule: PartitionRule, max_groups: MaxGroups) -> list[Group]:
    return partition(model, rule, max_groups)


def _check_finite(s: Summaries) -> None:
    values = [s.g, s.H] + ([s.d3] if s.d3 is not None else [])
    if not all(bool(torch.isfinite(v).all()) for v in values):
        raise NumericalError(
            "non_finite_summaries",
            "derivatives of the loss are not finite at the checkpoint (overflow or NaN)",
        )


def _mean(items: Sequence[Summaries]) -> Summaries:
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


def _single_group(s: Summaries) -> Summaries:
    """The S = 1 problem along the same u: ḡ and H̄ are sums (docs/method.md §1.4), D̄ was
    computed."""
    d3 = None if s.d3_total is None else torch.tensor([s.d3_total], dtype=torch.float64)
    return Summaries(g=s.g.sum().reshape(1), H=s.H.sum().reshape(1, 1), d3=d3, loss=s.loss)


def _single_rate(single: Summaries, mean: Summaries, lam_int: float) -> tuple[float, str | None]:
    """η for one group; if the averaged ḡ says the direction does not descend (gradient noise
    dominates), the inverse curvature along u, ‖u‖²/uᵀH̄u, the classic stable step size."""
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


class _Meter:
    """Counts passes, times the forward+backward used as the cost unit, reports progress."""

    def __init__(
        self, callback: Callable[[ProbeProgress], None] | None, total: int, device: torch.device
    ) -> None:
        self.callback, self.total, self.done, self.device = callback, total, 0, device
        self.passes: Counter[str] = Counter()
        self.fb_times: list[float] = []

    def fb(self) -> _Timer:
        self.passes["forward_backward"] += 1
        return _Timer(self.fb_times, self.device)

    def count_summaries(self, s: Summaries, third_order: bool) -> None:
        self.passes["forward_backward"] += 1
        self.passes["hessian_vector"] += s.size + (1 if third_order else 0)
        if third_order:
            self.passes["third_order"] += s.size + 1

    def tick(self, phase: Phase) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(ProbeProgress(self.done, self.total, phase))

    def cost(self, started: float, batches: int) -> Cost:
        seconds = time.perf_counter() - started
        fb = sorted(self.fb_times)[len(self.fb_times) // 2]
        return Cost(
            batches=batches,
            passes=dict(self.passes),
            seconds=seconds,
            fb_seconds=fb,
            fb_equivalents=seconds / fb if fb > 0 else math.nan,
            device=str(self.device),
        )


class _Timer:
    def __init__(self, sink: list[float], device: torch.device) -> None:
        self.sink, self.device = sink, device

    def __enter__(self) -> None:
        self._sync()
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.sink.append(time.perf_counter() - self.start)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _evaluator(model: nn.Module, loss_fn: LossFn, batch: Any, batch_seed: int):  # type: ignore[no-untyped-def]
    """Loss on one held-out batch at θ − step, with the same dropout masks for every step."""

    def evaluate(step: Mapping[str, Tensor], params: Mapping[str, Tensor], meter: _Meter) -> float:
        meter.passes["forward"] += 1
        with preserved(model, batch_seed), torch.no_grad(), shifted(params, step):
            return float(loss_fn(model, batch))

    return evaluate


def _checks(
    s: Summaries, eta: Tensor, realised: dict[float, list[float]], scales: Sequence[float]
) -> list[ScaleCheck]:
    return [
        ScaleCheck(
            scale=scale,
            predicted=cubic_model(s.H, s.g, None, scale * eta),
            realised=sum(realised[scale]) / len(realised[scale]),
        )
        for scale in scales
    ]


def _choose_scale(checks: list[ScaleCheck], trust: float) -> tuple[float, str | None]:
    """Largest λ₁ whose realised decrease is at least ``trust`` × the predicted one."""
    for check in sorted(checks, key=lambda c: -c.scale):
        if check.predicted < 0 and check.realised < 0 and check.ratio >= trust:
            return check.scale, None
    smallest = min(c.scale for c in checks)
    return smallest, (
        f"no candidate scale realised {trust:.0%} of the predicted decrease on held-out batches; "
        f"using the smallest, {smallest:g}"
    )


def _realised_at(checks: list[ScaleCheck], scale: float) -> float:
    return next(c.realised for c in checks if c.scale == scale)


def _bootstrap(
    per_batch: list[Summaries], lam_int: float, resamples: int, seed: int
) -> dict[str, list[Any]]:
    generator = torch.Generator().manual_seed(seed)
    K = len(per_batch)
    means, etas = [], []
    for _ in range(resamples):
        index = torch.randint(K, (K,), generator=generator).tolist()
        m = _mean([per_batch[i] for i in index])
        means.append(m)
        etas.append(solve(m, lam_int).eta)
    return {"means": means, "etas": etas}


def _interval(values: Sequence[float], factor: float, point: float) -> tuple[float, float]:
    if not values:
        return (factor * point, factor * point)
    t = torch.tensor(values, dtype=torch.float64)
    lo, hi = torch.quantile(t, torch.tensor([0.1, 0.9], dtype=torch.float64)).tolist()
    return (factor * lo, factor * hi)


def _group_results(
    groups: Sequence[Group],
    params: Mapping[str, Tensor],
    per_batch: list[Summaries],
    mean: Summaries,
    solution: Solution,
    newton: Solution,
    per_batch_eta: Tensor,
    boot_etas: list[Tensor],
    factor: float,
    single_lr: float,
    single_interval: tuple[float, float],
    lam_int: float,
) -> list[GroupResult]:
    g_all = torch.stack([s.g for s in per_batch])
    boot = torch.stack(boot_etas) if boot_etas else None
    results = []
    for i, group in enumerate(groups):
        eta = float(solution.eta[i])
        if boot is not None:
            lo, hi = torch.quantile(boot[:, i], torch.tensor([0.1, 0.9], dtype=torch.float64))
            eta_interval = (float(lo), float(hi))
        else:
            eta_interval = (eta, eta)
        h = float(mean.H[i, i])
        g = float(mean.g[i])
        std = float(g_all[:, i].std()) if len(per_batch) > 1 else math.nan
        flags: list[str] = []
        if i in solution.dropped:
            flags.append("unused")
        elif eta <= 0:
            flags.append("negative")
        if eta_interval[0] <= 0 < eta and i not in solution.dropped:
            flags.append("noisy")
        if _low_snr(g, std, len(per_batch)):
            flags.append("low_snr")
        if eta > 0 and i not in solution.dropped:
            lr, lr_interval = factor * eta, (factor * eta_interval[0], factor * eta_interval[1])
        else:
            lr, lr_interval = single_lr, single_interval
            if i not in solution.dropped:
                flags.append("fallback_global")
        column = per_batch_eta[:, i]
        q = torch.quantile(column, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        u2 = float(mean.u_sq_norm[i]) if mean.u_sq_norm is not None else math.nan
        results.append(
            GroupResult(
                name=group.name,
                param_names=group.param_names,
                numel=sum(params[n].numel() for n in group.param_names),
                lr=lr,
                lr_interval=lr_interval,
                eta=eta,
                eta_interval=eta_interval,
                eta_newton=float(newton.eta[i]) if newton.status == SolveStatus.NEWTON else None,
                eta_diagonal=g / h if h > 0 else None,
                g=g,
                g_snr=abs(g) / std if std > 0 else math.inf,
                h=h,
                curvature=h / u2 if u2 > 0 else math.nan,
                d3=None if mean.d3 is None else float(mean.d3[i]),
                spread=Spread(
                    median=q[1],
                    iqr=q[2] - q[0],
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


def _coupling(H: Tensor) -> list[list[float]]:
    """``H̄_st / sqrt(|H̄_ss H̄_tt|)``: scale-free cross-group coupling (0 where a group is idle)."""
    scale = H.diagonal().abs().sqrt()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    C = H / safe[:, None] / safe[None, :]
    C[scale == 0, :] = 0
    C[:, scale == 0] = 0
    return C.tolist()


def _trajectory_probe(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    spec: OptimizerSpec,
    groups: list[Group],
    optimizer_state: ParamState | None,
    *,
    steps: int,
    period: int,
    smoothing: float,
    scale: float,
    bounds: float | None,
    calibrate: Sequence[float],
    calibration_steps: int,
    shrink: float,
    lam_int: float,
    third_order: bool,
    seed: int,
    progress: Callable[[ProbeProgress], None] | None,
    device: torch.device,
    started: float,
    micro_batch: int | None,
    precision: Precision,
) -> ProbeResult:
    """The default method: see :mod:`lrprobe.worker.newton.trajectory` for why."""
    if steps < 2 or period < 1 or not 0 <= smoothing < 1 or scale <= 0:
        raise ValueError("need steps ≥ 2, period ≥ 1, 0 ≤ smoothing < 1 and trajectory_scale > 0")
    if calibrate and (calibration_steps < 1 or min(calibrate) <= 0):
        raise ValueError("calibrate needs positive candidates and calibration_steps ≥ 1")
    if not 0 <= shrink <= 1:
        raise ValueError("shrink must lie in [0, 1]")
    evaluations = -(-steps // period)
    extra = calibration_steps if calibrate else 0
    need = steps + evaluations + extra
    drawn = list(itertools.islice(iter(batches), need))
    if len(drawn) < need:
        raise ValueError(
            f"the probe needs {need} batches ({steps} steps + {evaluations} evaluations"
            + (f" + {extra} calibration steps" if extra else "")
            + f"), the iterable gave {len(drawn)}: pass an endless iterator or lower steps"
        )
    meter = _Meter(progress, total=steps + extra * len(calibrate), device=device)

    def on_step(s: Summaries | None) -> None:
        if s is not None:
            meter.count_summaries(s, third_order)
        meter.tick("trajectory")

    def fb_timer() -> _Timer:
        return meter.fb()

    notes: list[str] = []
    for attempt in range(_TRAJECTORY_ATTEMPTS):
        with preserved(model, seed):
            traj = run_trajectory(
                model, loss_fn, drawn[:steps], drawn[steps : steps + evaluations], spec, groups,
                optimizer_state=optimizer_state, scale=scale, period=period, lam_int=lam_int,
                third_order=third_order, smoothing=smoothing, bounds=bounds, seed=seed,
                on_step=on_step, fb_timer=fb_timer, micro_batch=micro_batch,
                precision=precision,
            )  # fmt: skip
        if not traj.diverged or attempt + 1 == _TRAJECTORY_ATTEMPTS:
            break
        # Rates that blow the run up say little about the checkpoint: start again, gentler.
        notes.append(
            f"the trajectory diverged at rates {scale:g}·η after {traj.steps} steps; "
            "it was run again with rates 10× smaller"
        )
        scale *= 0.1
        meter.total += steps
    if traj.diverged:
        # The run blew up at λ₁: the rates it used are too large by an unknown factor.
        scale *= 0.3
        notes.append(
            f"the trajectory diverged after {traj.steps} steps: rates lowered by 0.3×; "
            "probe with a smaller trajectory_scale"
        )
    if shrink > 0:
        traj = _shrunk(traj, shrink)
    tail = traj.tail()
    window = traj.summaries[tail]
    mean = _mean(window)
    solution = solve(mean, lam_int)
    # Interpolated medians, like the interval's quantiles: torch.median takes the lower middle
    # value of an even count, which can fall below the 10 % quantile.
    eta = torch.quantile(traj.smoothed[tail], 0.5, dim=0)
    single_values = traj.single[tail].clamp(min=0)
    eta_single = float(torch.quantile(single_values, 0.5))
    single_note = None
    if eta_single <= 0:
        eta_single, single_note = _single_rate(_single_group(mean), mean, lam_int)
    single_lr = scale * eta_single
    prior = scale
    lo, hi = torch.quantile(single_values, torch.tensor([0.1, 0.9], dtype=torch.float64))
    single_interval = (scale * float(lo), scale * float(hi)) if single_note is None else (
        single_lr, single_lr,
    )  # fmt: skip
    scale_checks: list[ScaleCheck] = []
    if calibrate:
        # λ₁ by a short run of the user's optimizer per candidate: the one-step model cannot
        # say how large a fixed rate stays stable over hundreds of steps (quality benchmark).
        rates = [float(e) if e > 0 else eta_single for e in eta]

        def calibration_change(per_group: list[float]) -> float:
            with preserved(model, seed):
                run = calibration_losses(
                    model, loss_fn, drawn[steps + evaluations :], spec, groups, per_group,
                    optimizer_state=optimizer_state, seed=seed + _HELDOUT_SEED,
                    fb_timer=fb_timer, micro_batch=micro_batch,
                )  # fmt: skip
            for _ in run:
                meter.tick("calibration")
            tail_losses = run[-max(1, len(run) // 4) :]
            finite = len(run) == calibration_steps and all(map(math.isfinite, run))
            return sum(tail_losses) / len(tail_losses) - run[0] if finite else math.inf

        for candidate in calibrate:
            change = calibration_change([candidate * r for r in rates])
            scale_checks.append(ScaleCheck(candidate, math.nan, change))
        best = min(scale_checks, key=lambda c: c.realised)
        if math.isfinite(best.realised) and best.realised < 0:
            scale = best.scale
        else:
            scale = min(calibrate)
            notes.append(
                "no calibration run lowered the training loss: using the smallest candidate "
                "scale; treat these rates as an upper bound"
            )
        single_lr = scale * eta_single
        single_interval = (scale * single_interval[0] / prior, scale * single_interval[1] / prior)
    newton = solve(mean, 0.0)
    group_results = _trajectory_groups(
        groups, dict(model.named_parameters()), traj, mean, solution, newton, eta, scale,
        single_lr, single_interval,
    )  # fmt: skip
    if single_note:
        notes.append(single_note)
    notes += _solver_notes(solution)
    notes += flag_notes(group_results)
    spread = _spread_note(group_results, single_lr)
    if spread:
        notes.append(spread)
    return ProbeResult(
        optimizer=spec.to_dict(),
        direction=f"{spec.name} steps along a {traj.steps}-step grouped-Newton trajectory",
        lr_factor=1.0,
        scale=scale,
        groups=group_results,
        single_group_lr=single_lr,
        single_group_eta=eta_single,
        single_group_interval=single_interval,
        lam_int=lam_int,
        **_model_fields(mean, solution, newton, eta, realised_at_scale=None),
        scale_checks=scale_checks,
        cost=meter.cost(started, batches=len(drawn)),
        notes=notes,
        method="trajectory",
        trajectory_losses=traj.losses,
    )


def _shrunk(traj: Trajectory, shrink: float) -> Trajectory:
    """η̄ pulled toward the single-group η₁ of each evaluation in log space (where both are
    positive): ``η₁^shrink · η̄^(1−shrink)``. Monotone in η̄, so intervals stay ordered."""
    single = traj.single[:, None].expand_as(traj.smoothed)
    ok = (traj.smoothed > 0) & (single > 0)
    pulled = single.clamp(min=1e-300) ** shrink * traj.smoothed.clamp(min=1e-300) ** (1 - shrink)
    return replace(traj, smoothed=torch.where(ok, pulled, traj.smoothed))


def _trajectory_groups(
    groups: Sequence[Group],
    params: Mapping[str, Tensor],
    traj: Trajectory,
    mean: Summaries,
    solution: Solution,
    newton: Solution,
    eta: Tensor,
    scale: float,
    single_lr: float,
    single_interval: tuple[float, float],
) -> list[GroupResult]:
    tail = traj.tail()
    smoothed, raw = traj.smoothed[tail], traj.etas[tail]
    quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    g_all = torch.stack([s.g for s in traj.summaries[tail]])
    results = []
    for i, group in enumerate(groups):
        q10, _, _, _, q90 = torch.quantile(smoothed[:, i], quantiles).tolist()
        _, r25, r50, r75, _ = torch.quantile(raw[:, i], quantiles).tolist()
        h, g = float(mean.H[i, i]), float(mean.g[i])
        std = float(g_all[:, i].std()) if g_all.shape[0] > 1 else math.nan
        negative = float((raw[:, i] < 0).double().mean())
        flags: list[str] = []
        if i in solution.dropped:
            flags.append("unused")
        elif negative >= NEGATIVE_SHARE:
            flags.append("negative")
        if q10 <= 0 < float(eta[i]):
            flags.append("noisy")
        # low_snr is not raised by the trajectory probe: on the quality benchmark it fired in
        # 45 of 54 runs, and those did better, not worse (g_snr is still reported).
        if float(eta[i]) > 0:
            lr, lr_interval = scale * float(eta[i]), (scale * q10, scale * q90)
        else:
            # relu kept this group at 0 for most of the run; a frozen layer is the worst
            # possible advice, so it gets the single-group rate instead.
            lr, lr_interval = single_lr, single_interval
            if i not in solution.dropped:
                flags.append("fallback_global")
        u2 = float(mean.u_sq_norm[i]) if mean.u_sq_norm is not None else math.nan
        results.append(
            GroupResult(
                name=group.name,
                param_names=group.param_names,
                numel=sum(params[n].numel() for n in group.param_names),
                lr=lr,
                lr_interval=lr_interval,
                eta=float(eta[i]),
                eta_interval=(q10, q90),
                eta_newton=float(newton.eta[i]) if newton.status == SolveStatus.NEWTON else None,
                eta_diagonal=g / h if h > 0 else None,
                g=g,
                g_snr=abs(g) / std if std > 0 else math.inf,
                h=h,
                curvature=h / u2 if u2 > 0 else math.nan,
                d3=None if mean.d3 is None else float(mean.d3[i]),
                spread=Spread(
                    median=r50,
                    iqr=r75 - r25,
                    negative_fraction=negative,
                ),
                flags=tuple(flags),
            )
        )
    return results


# The share of tail evaluations with a negative raw η from which a group is flagged
# ``negative``. Calibrated on the quality benchmark (gn-probe/0.3, 54 runs): runs with such a
# group had a median regret of 0.032 against 0.005 (39 % above 0.05 against 19 %), where the
# old "median η ≤ 0" (a share of 0.5) flagged 36 of 54 runs and barely separated them.
NEGATIVE_SHARE = 0.8
# Per-layer rates spanning more than this factor: such runs did worse on the benchmark (median
# regret 0.047 against 0.005, 46 % above 0.05 against 10 %); the probe says so in its notes.
WIDE_SPREAD = 30.0


def _spread_note(groups: Sequence[GroupResult], single_lr: float) -> str | None:
    rates = [g.lr for g in groups if "unused" not in g.flags and g.lr > 0]
    if len(rates) < 2 or max(rates) <= WIDE_SPREAD * min(rates):
        return None
    return (
        f"the per-layer rates span {max(rates) / min(rates):.0f}× (more than {WIDE_SPREAD:.0f}×): "
        "on the quality benchmark such recommendations missed more of the grid's improvement; "
        f"if training is unstable, try the single-group rate {single_lr:.3g} for every group"
    )
