"""Training runs and the ways of choosing their learning rate, for one (task, start, optimizer,
seed) at a time. Everything is deterministic for a seed on one thread."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from dadaptation import DAdaptAdam, DAdaptSGD  # type: ignore[import-untyped]
from dog import DoG  # type: ignore[import-untyped]
from matplotlib.figure import Figure
from prodigyopt import Prodigy  # type: ignore[import-untyped]
from schedulefree import AdamWScheduleFree, SGDScheduleFree  # type: ignore[import-untyped]
from torch import Tensor, nn
from torch_lr_finder import LRFinder, TrainDataLoaderIter  # type: ignore[import-untyped]

from bench.quality.tasks import Task, load
from lrprobe.integrations import LocalProbe, Reprobe
from lrprobe.rules.calibration import heavy_ball
from lrprobe.worker.newton import NumericalError, ProbeResult, minibatches, probe
from lrprobe.worker.newton.schedules import Schedule, warmup_cosine, warmup_steps
from lrprobe.worker.newton.trajectory import TrajectoryOptions

OPTIMIZERS = ("sgd", "momentum", "adamw")
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.1, "adamw": 1e-3}
# 7-point grids, half a decade apart, centred on each optimizer's usual range.
GRID = {
    "sgd": tuple(10 ** (e / 2) for e in range(-6, 1)),  # 1e-3 … 1
    "momentum": tuple(10 ** (e / 2) for e in range(-7, 0)),  # 3e-4 … 0.3
    "adamw": tuple(10 ** (e / 2) for e in range(-8, -1)),  # 1e-4 … 0.1
}
RANGE_TEST_STEPS = 100
_WARMUP_LR = {"sgd": 0.03, "momentum": 0.003, "adamw": 3e-4}
_HYPER: dict[str, dict[str, Any]] = {
    "sgd": {},
    "momentum": {"momentum": 0.9},
    "adamw": {"weight_decay": 0.01},
}


@dataclass(frozen=True)
class Job:
    task: str
    start: str  # "init" | "warm"
    optimizer: str
    seed: int
    steps: int
    warmup_steps: int
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    evals: int = 10
    # Every method's training run follows this schedule, its rate being the peak (the
    # schedule-free optimizer follows its own, with the same warm-up).
    schedule: Schedule = "constant"


@dataclass
class Outcome:
    """One training run: losses, the rate(s) it used, and what it cost.

    ``selection_fb``/``selection_seconds``: forward+backward passes and wall time spent choosing
    the rate before training (0 for the default and for the learning-rate-free peers, which
    choose it while training); ``train_fb``/``train_seconds``: the training run itself.
    ``train_start``/``test_start``: losses at the starting point, the zero of regret.
    """

    train: float
    test_final: float
    test_best: float
    diverged: bool
    lr: float | list[float] | str
    selection_fb: float
    selection_seconds: float = 0.0
    train_start: float = math.nan
    test_start: float = math.nan
    train_fb: int = 0
    train_seconds: float = 0.0
    # The rates a re-probe put in place (sorted, distinct), when the run was probed again;
    # a re-probe that failed (its passes unknown, the rates kept) is listed instead.
    reprobed_lr: list[float] | None = None
    reprobe_failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def make_optimizer(name: str, model: nn.Module, lrs: Mapping[str, float]) -> torch.optim.Optimizer:
    """One parameter group per tensor, so that a warm state dict fits every method's rates."""
    groups = [{"params": [p], "lr": lrs[n]} for n, p in model.named_parameters()]
    if name == "adamw":
        return torch.optim.AdamW(groups, **_HYPER[name])
    return torch.optim.SGD(groups, **_HYPER[name])


def checkpoint(task: Task, job: Job) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """The starting point: a fresh init, or a short warm-up at a conservative rate (state kept)."""
    model = task.model(job.seed)
    if job.start == "init":
        return copy.deepcopy(model.state_dict()), None
    rates = dict.fromkeys(dict(model.named_parameters()), _WARMUP_LR[job.optimizer])
    optimizer = make_optimizer(job.optimizer, model, rates)
    batches = minibatches(*task.train, batch_size=task.batch_size, seed=job.seed + 50_000)
    for _ in range(job.warmup_steps):
        optimizer.zero_grad()
        task.loss(model, next(batches)).backward()
        optimizer.step()
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


Start = tuple[dict[str, Tensor], dict[str, Any] | None]


def restore(
    task: Task, job: Job, start: Start, lrs: Mapping[str, float] | float
) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = task.model(job.seed)
    model.load_state_dict(start[0])
    names = [n for n, _ in model.named_parameters()]
    rates = dict.fromkeys(names, lrs) if isinstance(lrs, float | int) else dict(lrs)
    optimizer = make_optimizer(job.optimizer, model, {n: float(rates[n]) for n in names})
    if start[1] is not None:
        state = copy.deepcopy(start[1])
        for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
            saved["lr"] = group["lr"]
        optimizer.load_state_dict(state)
    return model, optimizer


def evaluate(task: Task, model: nn.Module, data: tuple[Tensor, Tensor]) -> float:
    with torch.no_grad():
        return float(task.loss(model, (data[0][:1024], data[1][:1024])))


OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


class _Recorded(LocalProbe):
    """The product's inline prober, keeping what each re-probe returned (for its cost)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.results: list[ProbeResult] = []

    def __call__(self, snapshot: Any, step: int) -> ProbeResult:
        result = super().__call__(snapshot, step)
        assert isinstance(result, ProbeResult)
        self.results.append(result)
        return result


def horizon(optimizer: str) -> int:
    """As many optimizer steps as the default probe takes in one go: its trajectory and one
    calibration run (twice as long with heavy-ball momentum). Both start at the checkpoint, so
    the probe has seen training that far along neither; it is the re-probe's point of
    comparison, a re-probe at the probe's own length."""
    options = TrajectoryOptions()
    momentum = float(_HYPER[optimizer].get("momentum", 0.0))
    factor = options.momentum_calibration_factor if heavy_ball(optimizer, momentum) else 1
    return options.steps + options.calibration_steps * factor


def train(
    task: Task,
    job: Job,
    start: Any,
    lrs: Mapping[str, float] | float,
    optimizer_factory: OptimizerFactory | None = None,
    reprobe_at: int | None = None,
) -> Outcome:
    """``job.steps`` steps; held-out loss every ``steps / evals`` steps. A run whose loss stops
    being finite counts as diverged and keeps the losses of its starting point (no progress).

    ``optimizer_factory`` trains the checkpoint's weights with another optimizer (a peer) from a
    fresh state; ``lrs`` then only labels the run. Schedule-free optimizers are switched to their
    averaged weights (``optimizer.eval()``) for every held-out evaluation, as documented.

    ``reprobe_at``: probe again after that many steps and go on at the new rates, as
    ``lrprobe.Reprobe(LocalProbe(...), milestones=[reprobe_at])`` does in a user's loop (on
    batches of its own); the re-probe's passes count as selection, its seconds as training."""
    reprobe: Reprobe | None = None
    prober: _Recorded | None = None
    if optimizer_factory is None:
        model, optimizer = restore(task, job, start, lrs)
    else:
        model = task.model(job.seed)
        model.load_state_dict(start[0])
        with contextlib.redirect_stdout(io.StringIO()):  # D-Adaptation prints its settings
            optimizer = optimizer_factory(model)
    switch = callable(getattr(optimizer, "eval", None)) and callable(
        getattr(optimizer, "train", None)
    )

    def held_out(data: tuple[Tensor, Tensor]) -> float:
        if switch:
            optimizer.eval()  # type: ignore[attr-defined]
        value = evaluate(task, model, data)
        if switch:
            optimizer.train()  # type: ignore[attr-defined]
        return value

    if switch:
        optimizer.train()  # type: ignore[attr-defined]
    scheduler = None
    if job.schedule == "cosine" and not switch:  # schedule-free follows its own
        scheduler = warmup_cosine(optimizer, job.steps)  # the rates are its peak
    if reprobe_at is not None and optimizer_factory is None:
        stream = minibatches(*task.train, batch_size=task.batch_size, seed=job.seed + 60_000)
        prober = _Recorded(task.loss, stream, seed=job.seed)
        # The schedule goes on multiplying the re-probe's rates, as in a user's loop.
        reprobe = Reprobe(
            prober, model, optimizer, milestones=[reprobe_at], probe_first=False,
            schedulers=[scheduler] if scheduler is not None else (),
        )  # fmt: skip
    batches = minibatches(*task.train, batch_size=task.batch_size, seed=job.seed + 10_000)
    torch.manual_seed(job.seed + 20_000)
    first_test = evaluate(task, model, task.test)
    first_train = evaluate(task, model, task.train)
    best, every = first_test, max(1, job.steps // job.evals)
    diverged = False
    started = time.perf_counter()
    taken = 0
    for t in range(1, job.steps + 1):
        optimizer.zero_grad()
        loss = task.loss(model, next(batches))
        taken = t
        if not math.isfinite(float(loss.detach())):
            diverged = True
            break
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if reprobe is not None:
            reprobe.step()
        if t % every == 0:
            current = held_out(task.test)
            if not math.isfinite(current):
                diverged = True
                break
            best = min(best, current)
    seconds = time.perf_counter() - started
    lr_used = lrs if isinstance(lrs, float | int | str) else sorted(set(lrs.values()))
    results = prober.results if prober else []
    failures = [why for _, why in reprobe.history.failures] if reprobe else []
    if reprobe is not None:
        reprobe.close()  # a failed re-probe left the rates as they were, as it would a user's
    # A re-probe is selection, in passes and seconds (the caller adds the first probe's).
    reprobing = sum(r.cost.seconds for r in results)
    common = {"train_start": first_train, "test_start": first_test, "train_fb": taken,
              "train_seconds": seconds - reprobing, "selection_seconds": reprobing,
              "reprobed_lr": sorted({g.lr for g in results[-1].groups}) if results else None,
              "reprobe_failures": failures}  # fmt: skip
    selected = sum(r.cost.pass_equivalents for r in results)
    if not diverged:
        final_test, final_train = held_out(task.test), held_out(task.train)
        if math.isfinite(final_test) and math.isfinite(final_train):
            return Outcome(final_train, final_test, best, False, lr_used, selected, **common)
    return Outcome(first_train, first_test, best, True, lr_used, selected, **common)


class _Batches(TrainDataLoaderIter):  # type: ignore[misc]
    """Our endless minibatch stream, in the shape torch-lr-finder iterates over."""

    def __init__(self, batches: Iterator[tuple[Tensor, Tensor]]) -> None:
        self.data_loader, self._iterator, self.auto_reset = None, batches, False

    def __next__(self) -> tuple[Tensor, Tensor]:
        return next(self._iterator)


def range_test(task: Task, job: Job, start: Any) -> tuple[float, int]:
    """The LR range test of ``torch-lr-finder`` (Smith 2017) as its README runs it: the user's
    optimizer from lr 1e-7, exponentially up to ``end_lr`` = 10 over 100 steps, stopping once
    the smoothed loss exceeds 5× its best; the suggestion is ``plot(suggest_lr=True)``'s
    steepest-descent point. Returns (suggested lr, steps taken)."""
    model, optimizer = restore(task, job, start, 1e-7)
    batches = minibatches(*task.train, batch_size=task.batch_size, seed=job.seed + 30_000)
    finder = LRFinder(model, optimizer, lambda out, y: task.criterion(out, y), device="cpu")
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        finder.range_test(_Batches(batches), end_lr=10, num_iter=RANGE_TEST_STEPS)
        taken = len(finder.history["lr"])
        try:
            _, suggestion = finder.plot(ax=Figure().add_subplot(), suggest_lr=True)
        except RuntimeError:  # too few points before the loss blew up: its first rates
            suggestion = finder.history["lr"][0]
    return float(suggestion), taken


PEERS = ("prodigy", "schedulefree", "dadaptation", "dog")


def peer_factory(name: str, optimizer: str, warmup: int = 0) -> OptimizerFactory:
    """A learning-rate-free optimizer at its package's documented defaults. Only the weight
    decay follows the cell (AdamW's 0.01, none for SGD), and the family follows the user's
    optimizer where the package has one: schedule-free and D-Adaptation have SGD and Adam
    variants (SGDScheduleFree's own default momentum is 0.9), Prodigy is Adam-like and DoG
    SGD-like whatever the cell.

    ``warmup``: the steps of the schedule's warm-up the run trains under (0: no schedule).
    Schedule-free takes it as its own ``warmup_steps`` (it follows no other schedule), and
    Prodigy gets ``safeguard_warmup=True``, as its README asks of a run with warm-up."""
    decay = float(_HYPER[optimizer].get("weight_decay", 0.0))
    adam = optimizer == "adamw"
    if name == "prodigy":
        safeguard = warmup > 0
        return lambda m: Prodigy(
            m.parameters(), lr=1.0, weight_decay=decay, safeguard_warmup=safeguard
        )
    if name == "schedulefree":
        if adam:
            return lambda m: AdamWScheduleFree(
                m.parameters(), weight_decay=decay, warmup_steps=warmup
            )
        return lambda m: SGDScheduleFree(m.parameters(), warmup_steps=warmup)
    if name == "dadaptation":
        if adam:
            return lambda m: DAdaptAdam(m.parameters(), lr=1.0, weight_decay=decay, decouple=True)
        momentum = float(_HYPER[optimizer].get("momentum", 0.0))
        return lambda m: DAdaptSGD(m.parameters(), lr=1.0, momentum=momentum)
    if name == "dog":
        return lambda m: DoG(m.parameters(), weight_decay=decay)
    raise ValueError(f"unknown peer {name!r}")


def run_probe(task: Task, job: Job, start: Any, kwargs: Mapping[str, Any]) -> tuple[Any, float]:
    model, optimizer = restore(task, job, start, 0.0)
    kwargs = dict(kwargs)
    train_split = task.train
    fraction = kwargs.pop("validation_fraction", None)
    if fraction:
        # A validation split of the training data that the probe never trains on (the test
        # split stays unseen); training afterwards uses the whole training set, as a user would.
        generator = torch.Generator().manual_seed(job.seed)
        order = torch.randperm(len(task.train[1]), generator=generator)
        cut = int(len(order) * (1 - fraction))
        train_split = tuple(t[order[:cut]] for t in task.train)
        held = tuple(t[order[cut:]] for t in task.train)
        kwargs["validation"] = [
            tuple(t[i : i + task.batch_size] for t in held)
            for i in range(0, len(held[1]), task.batch_size)
        ]
    batches = minibatches(*train_split, batch_size=task.batch_size, seed=job.seed + 40_000)
    started = time.perf_counter()
    opt: Any = optimizer if start[1] is not None else job.optimizer
    if opt == "adamw":
        from lrprobe.worker.newton import OptimizerSpec

        opt = OptimizerSpec("adamw", weight_decay=_HYPER["adamw"]["weight_decay"])
    result = probe(model, task.loss, batches, optimizer=opt, seed=job.seed, **kwargs)
    return result, time.perf_counter() - started


def run_job(task: Task, job: Job) -> dict[str, Any]:
    """Every method for one (task, start, optimizer, seed)."""
    torch.set_num_threads(1)
    start = checkpoint(task, job)
    out: dict[str, Any] = {}
    probed: dict[str, tuple[ProbeResult, float]] = {}  # a probe is deterministic: run it once
    for name, variant in {"lrprobe": {}, **job.variants}.items():
        kwargs = dict(variant)
        # "reprobe_at": train at the probe's rates, then probe again after that many steps
        # ("horizon": after as many steps as the probe took; see horizon()).
        at = kwargs.pop("reprobe_at", None)
        reprobe_at = horizon(job.optimizer) if at == "horizon" else at
        if reprobe_at is not None and not (isinstance(reprobe_at, int) and reprobe_at >= 1):
            raise ValueError(f"reprobe_at must be 'horizon' or a step ≥ 1, not {at!r}")
        # "lr_scale": the recommended rates times this (a schedule's peak against a constant
        # rate); its single-group rate, scaled alike, is recorded as "<name>-single".
        peak = float(kwargs.pop("lr_scale", 1.0))
        key = repr(sorted(kwargs.items()))
        try:
            result, seconds = probed[key] if key in probed else run_probe(task, job, start, kwargs)
            probed[key] = result, seconds
        except (NumericalError, ValueError) as error:
            # The user would get this error and no rate: scored as no progress from the start.
            failed = train(task, job, start, 0.0)
            code = getattr(error, "code", str(error)[:80])
            failed.diverged, failed.lr = True, f"error: {code}"  # type: ignore[assignment]
            out[name] = failed.as_dict()
            if name == "lrprobe" or peak != 1.0:
                out[f"{name}-single"] = failed.as_dict()
            continue
        fb = result.cost.pass_equivalents
        lrs = {n: peak * g.lr for g in result.groups for n in g.param_names}
        per_layer = train(task, job, start, lrs, reprobe_at=reprobe_at)
        per_layer.selection_fb += fb
        per_layer.selection_seconds += seconds
        out[name] = per_layer.as_dict()
        # What the probe said about itself, to check that its flags predict worse outcomes.
        out[name]["flags"] = sorted({f for g in result.groups for f in g.flags})
        out[name]["notes"] = len(result.notes)
        # The calibration contest's outcome, to tell rates too small from too large.
        out[name]["scale"] = result.scale
        out[name]["scale_checks"] = [[c.scale, c.realised] for c in result.scale_checks]
        out[name]["note_texts"] = list(result.notes)
        out[name]["groups"] = [
            {"flags": list(g.flags), "g_snr": g.g_snr, "negative_fraction":
             g.spread.negative_fraction, "eta_interval": list(g.eta_interval), "eta": g.eta,
             "lr": g.lr, "single": result.single_group_lr}
            for g in result.groups
        ]  # fmt: skip
        if name == "lrprobe" or peak != 1.0:
            single = train(task, job, start, peak * result.single_group_lr)
            single.selection_fb, single.selection_seconds = fb, seconds
            out[f"{name}-single"] = single.as_dict()
    started = time.perf_counter()
    suggestion, taken = range_test(task, job, start)
    ranged = train(task, job, start, suggestion)
    ranged.selection_fb, ranged.selection_seconds = taken, time.perf_counter() - started
    out["range-test"] = ranged.as_dict()
    out["default"] = train(task, job, start, DEFAULT_LR[job.optimizer]).as_dict()
    for peer in PEERS:
        factory = peer_factory(peer, job.optimizer, warmup_steps(job.schedule, job.steps))
        out[peer] = train(task, job, start, peer, factory).as_dict()
    out["grid"] = {f"{lr:.3g}": train(task, job, start, lr).as_dict() for lr in GRID[job.optimizer]}
    return out


def timed_job(job: Job) -> tuple[Job, dict[str, Any], float]:
    """A worker process's unit of work (module-level so that it pickles)."""
    started, cpu = time.perf_counter(), time.process_time()
    out = run_job(load(job.task), job)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    # CPU seconds too: on a shared machine they, not wall time, say how long the job takes.
    print(
        f"{job.task} {job.start} {job.optimizer} seed {job.seed}: {seconds:.0f} s "
        f"({cpu:.0f} s CPU)",
        flush=True,
    )
    return job, out, seconds
