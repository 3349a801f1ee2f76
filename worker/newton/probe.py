"""The probe's entry point (docs/method.md §7): from a checkpoint to one learning rate per group.

:func:`probe` checks its arguments, resolves the optimizer and the groups, and hands over to one
of the two methods: :mod:`~lrprobe.worker.newton.trajectory` (the default) or
:mod:`~lrprobe.worker.newton.fixed`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from lrprobe.rules.calibration import MOMENTUM_CALIBRATION_FACTOR
from lrprobe.worker.newton.directions import DirectionRule, OptimizerSpec, ParamState, from_torch
from lrprobe.worker.newton.fixed import FixedOptions, fixed_probe
from lrprobe.worker.newton.meter import Phase, ProbeProgress
from lrprobe.worker.newton.partition import Group, MaxGroups, PartitionRule
from lrprobe.worker.newton.partition import partition as partition_model
from lrprobe.worker.newton.precision import Precision
from lrprobe.worker.newton.result import ProbeResult
from lrprobe.worker.newton.schedules import Schedule
from lrprobe.worker.newton.summaries import LossFn
from lrprobe.worker.newton.trajectory import TrajectoryOptions, Unanchored, trajectory_probe

__all__ = ["Method", "Phase", "ProbeProgress", "probe"]

Method = Literal["trajectory", "fixed"]


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
    adam_bounds: float | None = 3.0,
    unanchored: Unanchored = "relu",
    calibrate: Sequence[float] = (0.03, 0.1, 0.3),
    calibration_steps: int = 40,
    extend_edge: float | None = 1.3,
    extend_min_drop: float = 0.1,
    extend_momentum: bool = False,
    calibration_tolerance: float = 0.05,
    momentum_calibration_factor: int = MOMENTUM_CALIBRATION_FACTOR,
    shrink: float = 0.0,
    unsure_momentum: float = 0.5,
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
    validation: Iterable[Any] | None = None,
    calibration_schedule: Schedule = "constant",
) -> ProbeResult:
    """Recommend one learning rate per parameter group for the optimizer the user trains with.

    ``method="trajectory"`` (the default; why: :mod:`lrprobe.worker.newton.trajectory`): on a
    copy of the model, ``steps`` steps of the user's own optimizer with per-group rates
    ``trajectory_scale · η̄``, where η is re-solved every ``period`` steps on an independent
    batch (Newton with a Levenberg fallback by default), clipped to
    ``[η₁/bounds, bounds·η₁]`` around the single-group η₁ (where η₁ > 0) and smoothed by an EMA
    (``smoothing``), as the published optimizer does (docs/method.md §3.4). η̄ is the median over the
    second half. λ₁ is then the smallest candidate in ``calibrate`` whose
    ``calibration_steps``-step run from the checkpoint at ``λ₁ · η̄`` lowers the training loss by
    at least ``1 − calibration_tolerance`` times the most any candidate did (same batches for
    every candidate; ``momentum_calibration_factor`` times as many steps with heavy-ball
    momentum); the recommended lr is ``λ₁ · η̄`` and multiplies the optimizer's own step
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
            (trajectory; ``momentum_calibration_factor · calibration_steps`` with heavy-ball
            momentum) or ``2·num_batches + 2·heldout_batches`` (fixed); more are not read.
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
            ``bounds=None`` keeps only the published relu. ``adam_bounds``: the bounds for Adam
            and AdamW instead (3: their per-layer rates stray less from the single-group rate;
            why: :mod:`lrprobe.worker.newton.trajectory`); None applies ``bounds`` to them too.
            ``unanchored``: what an evaluation whose single-group η is not positive (the
            bounds' anchor) does: "relu" (the default) updates the rates unbounded there,
            "hold" leaves them as they were, "last" bounds them around the latest positive
            single-group η (both tried and not kept; see the module).
        calibrate: candidate λ₁ for the trajectory's recommendation; empty: ``trajectory_scale``.
        calibration_steps: length of each calibration run; with heavy-ball momentum (the
            "momentum" optimizer with β > 0) ``momentum_calibration_factor`` times as long (2:
            a large λ₁'s instability under momentum builds over more than 40 steps).
        calibration_tolerance: λ₁ is the smallest candidate whose loss drop is at least
            ``1 − calibration_tolerance`` times the largest drop (a share of the drop, not of
            the loss; 0: the lowest loss wins).
        extend_edge, extend_min_drop: when the largest candidate wins with a loss drop at
            least ``extend_edge`` times the next-largest's and at least ``extend_min_drop`` of
            the loss its run started from, one more candidate past it (on the same log grid) is
            run and joins the contest (``extend_edge=None``: never). Not with heavy-ball
            momentum unless ``extend_momentum``.
        shrink: pulls each group's η̄ toward the single-group η₁ of the same evaluation, in log
            space: ``η₁^shrink · η̄^(1−shrink)`` (0: none, 1: the single-group rate everywhere).
        unsure_momentum: multiplies λ₁ when the optimizer has heavy-ball momentum and the
            per-layer rates span more than 30× (1: never).
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
        validation: batches the probe never trains on (a held-out split of the user's data).
            Each λ₁ candidate is then scored by the change of their mean loss (eval mode) over
            its calibration run instead of by the training loss.
        calibration_schedule: each calibration run follows this schedule, compressed to the
            run's length (:mod:`lrprobe.worker.newton.schedules`). Leave it ``"constant"``
            even when training under warm-up + cosine: the constant contest's rates are the
            better peak of that schedule (quality benchmark; see the trajectory module).
        precision: ``"float32"``: derivatives of a bfloat16/float16 model or one run under
            autocast are taken in float32 with TF32 off; the trajectory's steps stay in the
            model's own precision, as in training. ``"model"``: derivatives as the model runs.

    Raises:
        ValueError: too few batches, bad arguments (messages name the offending keys).
        NumericalError: the loss or the summaries are not finite at the checkpoint.
        OutOfMemoryProbeError: even one example at a time does not fit (code ``out_of_memory``).
    """
    started = time.perf_counter()
    # The options first: a bad setting fails before any work is done.
    if method == "trajectory":
        lam = 0.0 if lam_int is None else lam_int
        options: TrajectoryOptions | FixedOptions = TrajectoryOptions(
            steps=steps, period=period, smoothing=smoothing, scale=trajectory_scale,
            bounds=bounds, adam_bounds=adam_bounds, unanchored=unanchored,
            calibrate=tuple(calibrate),
            calibration_steps=calibration_steps, extend_edge=extend_edge,
            extend_min_drop=extend_min_drop, extend_momentum=extend_momentum,
            calibration_tolerance=calibration_tolerance,
            momentum_calibration_factor=momentum_calibration_factor,
            shrink=shrink, unsure_momentum=unsure_momentum, lam_int=lam,
            third_order=lam > 0 if third_order is None else third_order, seed=seed,
            micro_batch=micro_batch, precision=precision,
            validation=tuple(validation) if validation is not None else (),
            calibration_schedule=calibration_schedule,
        )  # fmt: skip
    elif method == "fixed":
        if validation is not None:
            raise ValueError("validation batches apply to method='trajectory' only")
        if calibration_schedule != "constant":
            raise ValueError("calibration_schedule applies to method='trajectory' only")
        options = FixedOptions(
            num_batches=num_batches, heldout_batches=heldout_batches,
            lam_int=1.0 if lam_int is None else lam_int,
            third_order=True if third_order is None else third_order,
            bootstrap=bootstrap, scales=tuple(scales), trust=trust, seed=seed,
            micro_batch=micro_batch, precision=precision,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown method {method!r}: use 'trajectory' or 'fixed'")
    if isinstance(optimizer, torch.optim.Optimizer):
        spec, live_state = from_torch(optimizer, model)
        optimizer_state = optimizer_state if optimizer_state is not None else live_state
    else:
        spec = OptimizerSpec.parse(optimizer)
    groups = (
        list(partition)
        if isinstance(partition, Sequence) and not isinstance(partition, str)
        else partition_model(model, partition, max_groups)
    )
    names = [n for g in groups for n in g.param_names]
    params = dict(model.named_parameters())
    unknown = [n for g in spec.param_groups for n in g.params if n not in params]
    if unknown:
        raise ValueError(
            f"the optimizer's parameter groups name parameters the model does not have: "
            f"{unknown[:5]}; use the names of model.named_parameters()"
        )
    # Built for both methods: it also checks that a saved optimizer state covers every group.
    rule = DirectionRule(spec, optimizer_state, names)
    device = next(iter(params.values())).device
    if isinstance(options, TrajectoryOptions):
        return trajectory_probe(
            model, loss_fn, batches, spec, groups, optimizer_state, options,
            progress=progress, device=device, started=started,
        )  # fmt: skip
    return fixed_probe(
        model, loss_fn, batches, spec, groups, rule, options,
        progress=progress, device=device, started=started,
    )  # fmt: skip
