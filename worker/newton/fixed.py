"""The fixed-θ method (docs/method.md §7.1): summaries at the checkpoint, averaged, solved once.

θ stays fixed. For each of ``num_batches`` pairs, a direction batch gives ``u_k`` (the
optimizer's next step with lr = 1) and an independent summary batch gives ``ḡ_k, H̄_k, d3_k``.
The summaries are averaged and the cubic rule (``lam_int`` = 1 by default) solved once; a
bootstrap over the K summaries gives 10–90 % intervals. Then ``heldout_batches`` fresh
direction/evaluation pairs measure the realised loss change of ``scale · η · u`` for each
candidate in ``scales``; the largest whose realised decrease is at least ``trust`` times the
quadratic model's prediction becomes λ₁. The recommended lr is ``λ₁ · lr_factor · η``
(``lr_factor`` = 1 − β for momentum without a saved buffer, docs/method.md §7.3).

Not the default: the one-step optimum at a single θ is a poor long-run rate (the evidence is in
:mod:`lrprobe.worker.newton.trajectory`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lrprobe.worker.newton.directions import DirectionRule, OptimizerSpec
from lrprobe.worker.newton.errors import NumericalError
from lrprobe.worker.newton.meter import Meter, ProbeProgress
from lrprobe.worker.newton.partition import Group
from lrprobe.worker.newton.pooled import mean_summaries, single_group, single_rate
from lrprobe.worker.newton.precision import Precision
from lrprobe.worker.newton.report import group_results, model_fields, solver_notes
from lrprobe.worker.newton.result import ProbeResult, ScaleCheck, flag_notes
from lrprobe.worker.newton.solve import cubic_model, solve
from lrprobe.worker.newton.state import preserved, shifted
from lrprobe.worker.newton.summaries import LossFn, Summaries, check_loss, summaries

# Offsets that keep the RNG seeds of direction, summary and held-out batches apart.
SUMMARY_SEED, HELDOUT_SEED = 100_003, 200_003


@dataclass(frozen=True)
class FixedOptions:
    """The fixed-θ method's settings (the arguments of :func:`~lrprobe.worker.newton.probe`).

    Raises:
        ValueError: a setting out of range (the message names it).
    """

    num_batches: int = 16
    heldout_batches: int = 4
    lam_int: float = 1.0
    third_order: bool = True
    bootstrap: int = 200
    scales: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03)
    trust: float = 0.5
    seed: int = 0
    micro_batch: int | None = None
    precision: Precision = "float32"

    def __post_init__(self) -> None:
        if self.num_batches < 1 or self.heldout_batches < 1:
            raise ValueError("num_batches and heldout_batches must be at least 1")
        if not self.scales:
            raise ValueError("scales needs at least one candidate")

    @property
    def batches_needed(self) -> int:
        return 2 * self.num_batches + 2 * self.heldout_batches


def fixed_probe(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    spec: OptimizerSpec,
    groups: Sequence[Group],
    rule: DirectionRule,
    options: FixedOptions,
    *,
    progress: Callable[[ProbeProgress], None] | None,
    device: torch.device,
    started: float,
) -> ProbeResult:
    """The fixed-θ probe of ``model`` (the method is described in this module's docstring).

    Args:
        rule: builds ``u`` for the groups' parameters from a gradient.
        started: ``time.perf_counter()`` when the probe began (its cost counts from there).

    Raises:
        ValueError: ``batches`` ran out before ``options.batches_needed``.
        NumericalError: the loss or the summaries are not finite at the checkpoint.
    """
    K, J, seed = options.num_batches, options.heldout_batches, options.seed
    lam_int, third_order = options.lam_int, options.third_order
    drawn = list(itertools.islice(iter(batches), options.batches_needed))
    if len(drawn) < options.batches_needed:
        raise ValueError(
            f"the probe needs {2 * K + 2 * J} batches (2 × {K} probe + 2 × {J} held-out), "
            f"the iterable gave {len(drawn)}: pass an endless iterator or lower num_batches"
        )
    direction_batches, summary_batches = drawn[0 : 2 * K : 2], drawn[1 : 2 * K : 2]
    heldout = drawn[2 * K :]
    names = [n for g in groups for n in g.param_names]
    params = dict(model.named_parameters())
    meter = Meter(progress, total=K * (2 if rule.needs_second_moment else 1) + J, device=device)

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
            total_third_order=third_order, seed=seed + SUMMARY_SEED + k,
            micro_batch=options.micro_batch, precision=options.precision,
        )  # fmt: skip
        _check_finite(s)
        meter.count_summaries(s, third_order)
        per_batch.append(s)
        meter.tick("summaries")

    mean = mean_summaries(per_batch)
    solution = solve(mean, lam_int)
    single = single_group(mean)
    eta = solution.eta
    eta_single, single_note = single_rate(mean, lam_int)

    # Held-out check: realised loss change of scale·η·u along fresh directions.
    by_name = {n: float(eta[i]) for i, g in enumerate(groups) for n in g.param_names}
    realised: dict[str, dict[float, list[float]]] = {"groups": {}, "single": {}}
    for j in range(J):
        u = rule.direction(gradient(heldout[2 * j], seed + HELDOUT_SEED + j), params)
        evaluate = _Evaluator(model, loss_fn, heldout[2 * j + 1], seed + 2 * HELDOUT_SEED + j)
        base = evaluate({}, params, meter)
        for scale in options.scales:
            for key, rates in (("groups", by_name), ("single", dict.fromkeys(names, eta_single))):
                step = {n: scale * rates[n] * u[n] for n in names}
                realised[key].setdefault(scale, []).append(evaluate(step, params, meter) - base)
        meter.tick("check")
    checks = _checks(mean, eta, realised["groups"], options.scales)
    single_checks = _checks(single, torch.tensor([eta_single]), realised["single"], options.scales)
    scale, scale_note = _choose_scale(checks, options.trust)
    single_scale, _ = _choose_scale(single_checks, options.trust)

    boot_means, boot_etas = _bootstrap(per_batch, lam_int, options.bootstrap, seed)
    factor = rule.lr_factor
    single_lr = single_scale * factor * eta_single
    single_draws = [single_rate(m, lam_int)[0] for m in boot_means]
    single_interval = _interval(single_draws, single_scale * factor, eta_single)
    newton = solve(mean, 0.0)
    groups_out = group_results(
        groups, params, per_batch, mean, solution, newton,
        eta=eta,
        eta_interval=_eta_intervals(boot_etas, eta),
        eta_samples=torch.stack([solve(s, lam_int).eta for s in per_batch]),
        negative=eta <= 0,
        factor=scale * factor,
        single_lr=single_lr,
        single_interval=single_interval,
        flag_low_snr=True,
    )  # fmt: skip

    notes = [scale_note] if scale_note else []
    notes += solver_notes(solution)
    if single_note:
        notes.append(single_note)
    notes += flag_notes(groups_out)
    return ProbeResult(
        optimizer=spec.to_dict(),
        direction=rule.description,
        lr_factor=factor,
        scale=scale,
        groups=groups_out,
        single_group_lr=single_lr,
        single_group_eta=eta_single,
        single_group_interval=single_interval,
        lam_int=lam_int,
        **model_fields(mean, solution, newton, eta, _realised_at(checks, scale)),
        scale_checks=checks,
        cost=meter.cost(started, batches=len(drawn)),
        notes=notes,
    )


def _check_finite(s: Summaries) -> None:
    values = [s.g, s.H] + ([s.d3] if s.d3 is not None else [])
    if not all(bool(torch.isfinite(v).all()) for v in values):
        raise NumericalError(
            "non_finite_summaries",
            "derivatives of the loss are not finite at the checkpoint (overflow or NaN)",
        )


class _Evaluator:
    """Loss on one held-out batch at θ − step, with the same dropout masks for every step."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch: Any, batch_seed: int) -> None:
        self.model, self.loss_fn, self.batch, self.batch_seed = model, loss_fn, batch, batch_seed

    def __call__(
        self, step: Mapping[str, Tensor], params: Mapping[str, Tensor], meter: Meter
    ) -> float:
        meter.passes["forward"] += 1
        with preserved(self.model, self.batch_seed), torch.no_grad(), shifted(params, step):
            return float(self.loss_fn(self.model, self.batch))


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
) -> tuple[list[Summaries], list[Tensor]]:
    """``resamples`` means of the K summaries drawn with replacement, and η of each."""
    generator = torch.Generator().manual_seed(seed)
    K = len(per_batch)
    means, etas = [], []
    for _ in range(resamples):
        index = torch.randint(K, (K,), generator=generator).tolist()
        m = mean_summaries([per_batch[i] for i in index])
        means.append(m)
        etas.append(solve(m, lam_int).eta)
    return means, etas


def _eta_intervals(boot_etas: list[Tensor], eta: Tensor) -> Tensor:
    """(S, 2): each group's 10 and 90 % bootstrap quantiles; (η, η) without a bootstrap."""
    if not boot_etas:
        return torch.stack([eta, eta], dim=1)
    boot = torch.stack(boot_etas)
    q = torch.tensor([0.1, 0.9], dtype=torch.float64)
    return torch.stack([torch.quantile(boot[:, i], q) for i in range(boot.shape[1])])


def _interval(values: Sequence[float], factor: float, point: float) -> tuple[float, float]:
    if not values:
        return (factor * point, factor * point)
    t = torch.tensor(values, dtype=torch.float64)
    lo, hi = torch.quantile(t, torch.tensor([0.1, 0.9], dtype=torch.float64)).tolist()
    return (factor * lo, factor * hi)
