"""Training runs and the ways of choosing their learning rate, for one (task, start, optimizer,
seed) at a time. Everything is deterministic for a seed on one thread."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bench.quality.tasks import Task, load
from lrprobe.worker.newton import NumericalError, minibatches, probe

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


@dataclass
class Outcome:
    """One training run: losses, the rate(s) it used, what choosing them cost (FB passes)."""

    train: float
    test_final: float
    test_best: float
    diverged: bool
    lr: float | list[float]
    selection_fb: float
    selection_seconds: float = 0.0

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


def train(task: Task, job: Job, start: Any, lrs: Mapping[str, float] | float) -> Outcome:
    """``job.steps`` steps; held-out loss every ``steps / evals`` steps. A run whose loss stops
    being finite counts as diverged and keeps the losses of its starting point (no progress)."""
    model, optimizer = restore(task, job, start, lrs)
    batches = minibatches(*task.train, batch_size=task.batch_size, seed=job.seed + 10_000)
    torch.manual_seed(job.seed + 20_000)
    first_test = evaluate(task, model, task.test)
    first_train = evaluate(task, model, task.train)
    best, every = first_test, max(1, job.steps // job.evals)
    diverged = False
    for t in range(1, job.steps + 1):
        optimizer.zero_grad()
        loss = task.loss(model, next(batches))
        if not math.isfinite(float(loss.detach())):
            diverged = True
            break
        loss.backward()
        optimizer.step()
        if t % every == 0:
            current = evaluate(task, model, task.test)
            if not math.isfinite(current):
                diverged = True
                break
            best = min(best, current)
    lr_used = lrs if isinstance(lrs, float | int) else sorted(set(lrs.values()))
    if diverged:
        return Outcome(first_train, first_test, best, True, lr_used, 0.0)  # type: ignore[arg-type]
    final_test, final_train = evaluate(task, model, task.test), evaluate(task, model, task.train)
    if not (math.isfinite(final_test) and math.isfinite(final_train)):
        return Outcome(first_train, first_test, best, True, lr_used, 0.0)  # type: ignore[arg-type]
    return Outcome(final_train, final_test, best, False, lr_used, 0.0)  # type: ignore[arg-type]


def range_test(task: Task, job: Job, start: Any) -> float:
    """The LR range test (Smith 2017; fastai's steepest-descent suggestion): lr grows
    exponentially from 1e-7 to 10 over 100 steps; suggest the lr where the smoothed loss falls
    fastest per unit of log lr (stopping once it exceeds 4× its best)."""
    model, optimizer = restore(task, job, start, 1e-7)
    batches = minibatches(*task.train, batch_size=task.batch_size, seed=job.seed + 30_000)
    lrs = [1e-7 * (1e8) ** (i / (RANGE_TEST_STEPS - 1)) for i in range(RANGE_TEST_STEPS)]
    smoothed, avg, best = [], 0.0, math.inf
    for i, lr in enumerate(lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        loss = task.loss(model, next(batches))
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        avg = 0.98 * avg + 0.02 * value
        current = avg / (1 - 0.98 ** (i + 1))
        smoothed.append(current)
        best = min(best, current)
        if current > 4 * best:
            break
        loss.backward()
        optimizer.step()
    # fastai drops the first 10 and last 5 points before taking the steepest slope.
    lo, hi = 10, max(11, len(smoothed) - 5)
    slopes = [
        (smoothed[i + 1] - smoothed[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
        for i in range(lo, min(hi, len(smoothed) - 1))
    ]
    if not slopes:
        return lrs[len(smoothed) // 2]
    return lrs[lo + min(range(len(slopes)), key=slopes.__getitem__)]


def run_probe(task: Task, job: Job, start: Any, kwargs: Mapping[str, Any]) -> tuple[Any, float]:
    model, optimizer = restore(task, job, start, 0.0)
    batches = minibatches(*task.train, batch_size=task.batch_size, seed=job.seed + 40_000)
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
    for name, kwargs in {"lrprobe": {}, **job.variants}.items():
        try:
            result, seconds = run_probe(task, job, start, kwargs)
        except (NumericalError, ValueError) as error:
            # The user would get this error and no rate: scored as no progress from the start.
            failed = train(task, job, start, 0.0)
            code = getattr(error, "code", str(error)[:80])
            failed.diverged, failed.lr = True, f"error: {code}"  # type: ignore[assignment]
            out[name] = failed.as_dict()
            if name == "lrprobe":
                out["lrprobe-single"] = failed.as_dict()
            continue
        fb = result.cost.pass_equivalents
        lrs = {n: g.lr for g in result.groups for n in g.param_names}
        per_layer = train(task, job, start, lrs)
        per_layer.selection_fb, per_layer.selection_seconds = fb, seconds
        out[name] = per_layer.as_dict()
        if name == "lrprobe":
            single = train(task, job, start, result.single_group_lr)
            single.selection_fb, single.selection_seconds = fb, seconds
            out["lrprobe-single"] = single.as_dict()
    started = time.perf_counter()
    suggestion = range_test(task, job, start)
    ranged = train(task, job, start, suggestion)
    ranged.selection_fb, ranged.selection_seconds = RANGE_TEST_STEPS, time.perf_counter() - started
    out["range-test"] = ranged.as_dict()
    out["default"] = train(task, job, start, DEFAULT_LR[job.optimizer]).as_dict()
    out["grid"] = {f"{lr:.3g}": train(task, job, start, lr).as_dict() for lr in GRID[job.optimizer]}
    return out


def timed_job(job: Job) -> tuple[Job, dict[str, Any], float]:
    """A worker process's unit of work (module-level so that it pickles)."""
    started = time.perf_counter()
    out = run_job(load(job.task), job)
    seconds = time.perf_counter() - started
    print(f"{job.task} {job.start} {job.optimizer} seed {job.seed}: {seconds:.0f} s", flush=True)
    return job, out, seconds
