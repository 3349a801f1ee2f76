"""The quality benchmark: lrprobe's recommendations against the usual ways of choosing a lr.

For each task, start (fresh init, or a checkpoint after a short warm-up), optimizer and seed,
N training steps with: lrprobe's per-layer rates, lrprobe's single-group rate, the best point
of a 7-point log grid (7 full runs), that grid's point as chosen on the other seeds
(``grid-cv``: how much the grid's own choice owes to the seeds it is scored on), the LR range
test of ``torch-lr-finder`` (≤ 100 steps),
the optimizer's default, and the learning-rate-free peers a user reaches for instead, each from
its published package at its documented defaults: Prodigy (``prodigyopt``), schedule-free
(``schedulefree``), D-Adaptation (``dadaptation``) and DoG (``dog-optimizer``). Reported: final
training loss, final and best held-out loss (mean ± std over seeds), the ratio and the regret to
the grid's best point, collapsed runs, and the compute spent choosing the rate in
forward+backward passes (the probe's derivative passes weighted as in docs/method.md §2.3;
grid = 7 × N) and seconds, with each training run's own seconds.

    python -m bench.quality            # the README table, ≈ 40 min on 2 shared cores
    python -m bench.quality --quick    # a smoke run, < 3 min
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.quality.runner import GRID, OPTIMIZERS, PEERS, Job, timed_job
from bench.quality.tasks import TASKS
from lrprobe.worker.newton.schedules import SCHEDULES, Schedule
from lrprobe.worker.newton.trajectory import PLATEAU_MARK, WIDE_SPREAD, rate_span

METHODS = ("lrprobe", "lrprobe-single", "grid", "grid-cv", "range-test", "default", *PEERS)
METRICS = ("train", "test_final", "test_best")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "quality.json"

# Alternatives to the default rule, compared with --variants (each costs one more run per job).
# gn-probe/0.6 from gn-probe/0.7's defaults: the contest's plain length and lowest loss.
_GN_06: dict[str, Any] = {"calibration_tolerance": 0.0, "momentum_calibration_factor": 1}
VARIANTS: dict[str, dict[str, Any]] = {
    "fixed": {"method": "fixed", "num_batches": 8, "bootstrap": 0},
    "uncalibrated": {"calibrate": ()},
    "cubic": {"lam_int": 1.0, "third_order": True},
    "traj-relu": {"bounds": None},
    "traj-b3": {"bounds": 3.0},
    "traj-s0.1": {"trajectory_scale": 0.1},
    "traj-s1": {"trajectory_scale": 1.0},
    "traj-newton": {"lam_int": 0.0, "third_order": False},
    "traj-p2": {"period": 2},
    "traj-20": {"steps": 20},
    "traj-g4": {"max_groups": 4},
    "cal": {"calibrate": (0.1, 0.3, 1.0)},  # = gn-0.2
    "cal-hi": {"calibrate": (0.3, 1.0, 3.0)},
    "cal-newton": {"calibrate": (0.1, 0.3, 1.0), "lam_int": 0.0, "third_order": False},
    "cal-newton-hi": {"calibrate": (0.3, 1.0, 3.0), "lam_int": 0.0, "third_order": False},
    "cal-single": {"calibrate": (0.1, 0.3, 1.0), "partition": "single"},
    "traj-single": {"partition": "single"},
    "traj-tensor": {"partition": "tensor"},
    "traj-block": {"partition": "block"},
    "traj-kind": {"partition": "kind"},
    # issue 11: rules that may not collapse where the single-group rate does not
    "cal-lo": {"calibrate": (0.03, 0.1, 0.3)},
    "cal-lo-b3": {"calibrate": (0.03, 0.1, 0.3), "bounds": 3.0},
    "shrink": {"shrink": 0.5},
    "gn-0.2": {"calibrate": (0.1, 0.3, 1.0)},  # the default before issue 11
    "cal-lo-shrink": {"calibrate": (0.03, 0.1, 0.3), "shrink": 0.5},
    "gn-0.3": {"unsure_momentum": 1.0, "adam_bounds": None},  # before the momentum margin
    "gn-0.4": {"adam_bounds": None},  # the default before Adam's bounds of 3
    "margin-0.25": {"unsure_momentum": 0.25},
    "cal-wide": {"calibrate": (0.03, 0.1, 0.3, 1.0)},
    # λ₁ scored on a validation split of the training data the probe never trains on
    "val-0.2": {"validation_fraction": 0.2},
    # one more λ₁ candidate past the largest when it wins (always, or while the drop is steep)
    "edge": {"extend_edge": 1.0, "extend_min_drop": 0.0},
    "edge-1.3": {"extend_edge": 1.3, "extend_min_drop": 0.0},
    "gn-0.5": {"extend_edge": None, **_GN_06},  # the default before the contest's extension
    "edge-momentum": {"extend_momentum": True, **_GN_06},  # the extension with heavy ball too
    # gn-probe/0.7: a longer λ₁ contest with heavy ball (its instability builds over more than
    # 40 steps), and the smallest candidate within 5 % of the best drop
    "gn-0.6": _GN_06,
    "cal-80": {**_GN_06, "calibration_steps": 80},
    "cal-80-edge": {**_GN_06, "calibration_steps": 80, "extend_momentum": True},
    "tie-5": {**_GN_06, "calibration_tolerance": 0.05},
    "cal-80-tie-5": {**_GN_06, "calibration_steps": 80, "calibration_tolerance": 0.05},
    "cal-80-tie-10": {**_GN_06, "calibration_steps": 80, "calibration_tolerance": 0.1},
    "edge-momentum-0.7": {"extend_momentum": True},  # gn-probe/0.7 with heavy ball's extension
    "margin-off-0.7": {"unsure_momentum": 1.0},  # gn-probe/0.7 without the momentum margin
    # gn-probe/0.7 with the bounds kept where the single-group η is not positive
    "hold": {"unanchored": "hold"},
    "last": {"unanchored": "last"},
    # gn-probe/0.7, probed again (Reprobe with a LocalProbe) once training has taken as many
    # steps as the probe did: 80, 120 with heavy-ball momentum (--quick's 100 steps: not then)
    "reprobe": {"reprobe_at": "horizon"},
    # gn-probe/0.7 whose λ₁ contest runs each candidate under the schedule the training runs
    # follow (--schedule cosine), compressed to the contest's length
    "cal-cosine": {"calibration_schedule": "cosine"},
    # gn-probe/0.7's rates times a factor, as the peak of a schedule (--schedule cosine)
    "peak-1.5": {"lr_scale": 1.5},
    "peak-2": {"lr_scale": 2.0},
    "peak-3": {"lr_scale": 3.0},
}


def jobs(
    tasks: Sequence[str], starts: Sequence[str], optimizers: Sequence[str], seeds: int,
    steps: int, variants: Sequence[str], first_seed: int = 0, schedule: Schedule = "constant",
) -> list[Job]:  # fmt: skip
    chosen = {v: VARIANTS[v] for v in variants}
    return [
        Job(
            task,
            start,
            opt,
            seed,
            steps=steps,
            warmup_steps=max(10, steps // 6),
            variants=chosen,
            schedule=schedule,
        )
        for task in tasks
        for start in starts
        for opt in optimizers
        for seed in range(first_seed, first_seed + seeds)
    ]


def run(
    all_jobs: list[Job], workers: int, partial: Path | None = None
) -> list[tuple[Job, dict[str, Any], float]]:
    """Every job; with ``partial``, each finished job is appended there as one JSON line, so
    that a run cut short still leaves its finished jobs (``--resume`` reads them back)."""
    done = _read_partial(partial) if partial else []
    finished = {_key(j) for j, _, _ in done}
    todo = [j for j in all_jobs if _key(j) not in finished]
    # Longest tasks first so that the two workers finish together.
    order = sorted(todo, key=lambda j: j.task != "gpt-lm")
    if workers <= 1:
        stream: Any = map(timed_job, order)
        results = [_record(r, partial) for r in stream]
        return done + results
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return done + [_record(r, partial) for r in pool.imap_unordered(timed_job, order)]


def _key(job: Job) -> tuple[Any, ...]:
    return (job.task, job.start, job.optimizer, job.seed, job.steps, tuple(job.variants),
            job.schedule)  # fmt: skip


def _record(
    result: tuple[Job, dict[str, Any], float], partial: Path | None
) -> tuple[Job, dict[str, Any], float]:
    if partial is not None:
        job, out, seconds = result
        with partial.open("a") as f:
            f.write(json.dumps({"job": asdict(job), "methods": out, "seconds": seconds}) + "\n")
    return result


def _read_partial(path: Path) -> list[tuple[Job, dict[str, Any], float]]:
    if not path.exists():
        return []
    results = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        job = Job(**entry["job"])
        results.append((job, entry["methods"], entry["seconds"]))
    return results


def aggregate(results: list[tuple[Job, dict[str, Any], float]]) -> list[dict[str, Any]]:
    """One row per (task, start, optimizer, method); the grid row is the grid point with the
    best mean of each metric (an oracle per metric, which favours the grid), the ``grid-cv``
    row the grid point each seed gets when the grid is chosen on the other seeds
    (:func:`_cross_validated`; with two seeds or more).

    ``regret`` (issue 11) is per seed, then averaged: (method's best held-out loss − that of the
    grid's best point) ÷ (the starting held-out loss − that of the grid's best point); 0 ties
    the grid, 1 is no progress, negative beats it. Unlike the ratio it does not explode where
    the grid reaches a loss near 0. It is floored at −1 (beating the grid by as much as the
    grid improved): where the grid barely moves, the span is tiny. A run ``collapsed`` when it
    diverged or its final training loss is nearer its start than the grid's best point's
    (training regret > 0.5)."""
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for job, out, _ in sorted(results, key=lambda r: r[0].seed):
        cells.setdefault((job.task, job.start, job.optimizer), []).append(out)
    rows = []
    for (task, start, opt), outs in cells.items():
        steps = next(j.steps for j, _, _ in results if j.task == task)
        methods = [m for m in outs[0] if m != "grid"]
        grid_best = {}
        for metric in METRICS:
            lr = min(outs[0]["grid"], key=lambda k: _mean([o["grid"][k][metric] for o in outs]))
            grid_best[metric] = (lr, [o["grid"][lr][metric] for o in outs])
        reference = _mean(grid_best["test_best"][1])
        chosen = [o["grid"][grid_best["test_best"][0]] for o in outs]
        cross = _cross_validated(outs)
        grid_cost = (
            len(GRID[opt]) * steps,
            _mean([sum(p.get("train_seconds", 0.0) for p in o["grid"].values()) for o in outs]),
        )
        for method in ["grid", *(["grid-cv"] if cross else []), *methods]:
            row: dict[str, Any] = {"task": task, "start": start, "optimizer": opt, "method": method}
            if method == "grid":
                runs = chosen
                for metric in METRICS:
                    row[metric] = _stats(grid_best[metric][1])
                row["lr"] = float(grid_best["test_best"][0])
                row["selection_fb"], row["selection_seconds"] = grid_cost
            else:
                runs = cross if method == "grid-cv" else [o[method] for o in outs]
                for metric in METRICS:
                    row[metric] = _stats([r[metric] for r in runs])
                row["lr"] = [r["lr"] for r in runs]
                if method == "grid-cv":  # it ran every grid point, on other seeds
                    row["selection_fb"], row["selection_seconds"] = grid_cost
                else:
                    row["selection_fb"] = _mean([r["selection_fb"] for r in runs])
                    row["selection_seconds"] = _mean(
                        [r.get("selection_seconds", 0.0) for r in runs]
                    )
            row["train_seconds"] = _mean([r.get("train_seconds", 0.0) for r in runs])
            row["diverged"] = sum(bool(r["diverged"]) for r in runs)
            pairs = list(zip(runs, chosen, strict=True))
            regrets = [_regret(r, g, "test_best", "test_start") for r, g in pairs]
            training = [_regret(r, g, "train", "train_start") for r, g in pairs]
            row["regret"] = _mean(regrets)
            row["regret_seeds"] = regrets
            row["collapsed_seeds"] = [
                bool(r["diverged"]) or t > 0.5 for r, t in zip(runs, training, strict=True)
            ]
            row["collapsed"] = sum(row["collapsed_seeds"])
            row["ratio"] = row["test_best"]["mean"] / reference
            rows.append(row)
    return rows


def _cross_validated(outs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grid as a user runs it (``grid-cv``): for each seed, the grid point with the best
    mean held-out loss over the other seeds, as run on this seed. The grid row's own point is
    chosen on the very seeds it is scored on, a selection that flatters it most where seeds
    disagree; this row says how much. Empty with one seed."""
    if len(outs) < 2:
        return []
    runs = []
    for i, out in enumerate(outs):
        others = [o for k, o in enumerate(outs) if k != i]
        pick = min(out["grid"], key=lambda lr: _mean([o["grid"][lr]["test_best"] for o in others]))
        runs.append(out["grid"][pick])
    return runs


def _regret(run: dict[str, Any], grid: dict[str, Any], metric: str, start: str) -> float:
    origin = run.get(start, grid.get(start, math.nan))
    span = origin - grid[metric]
    if not span > 0:  # the grid's best point made no progress: only doing worse counts
        return 0.0 if run[metric] <= grid[metric] else 1.0
    return max(-1.0, (run[metric] - grid[metric]) / span)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | start | optimizer | method | train loss | held-out (final) | held-out (best) "
        "| ratio to grid | regret | selection FB | selection s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        failed = f" ({r['collapsed']} collapsed)" if r["collapsed"] else ""
        lines.append(
            f"| {r['task']} | {r['start']} | {r['optimizer']} | {r['method']}{failed} | "
            + " | ".join(_fmt(r[m]) for m in METRICS)
            + f" | {r['ratio']:.3f} | {r['regret']:.3f} | {r['selection_fb']:.0f} "
            f"| {r['selection_seconds']:.1f} |"
        )
    return "\n".join(lines)


def _by_cell(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, dict[str, Any]]]:
    by_cell: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_cell.setdefault((r["task"], r["start"], r["optimizer"]), {})[r["method"]] = r
    return by_cell


def summary(rows: list[dict[str, Any]]) -> str:
    """Per method over all cells: regret (median, worst, cells within 0.02), the ratio, cells
    more than 0.05 regret behind lrprobe's own single-group rate, collapsed runs and cost."""
    lines = ["| method | median regret | worst regret | regret ≤ 0.02 | > single-group + 0.05 "
             "| median ratio | worst ratio | collapsed runs | selection FB | selection s "
             "| training s |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    by_cell = _by_cell(rows)
    for m in dict.fromkeys(r["method"] for r in rows):
        cells = [c for c in by_cell.values() if m in c]
        regrets = [c[m]["regret"] for c in cells]
        ratios = [c[m]["ratio"] for c in cells]
        behind = [
            c[m]["regret"] > c["lrprobe-single"]["regret"] + 0.05
            for c in cells
            if "lrprobe-single" in c
        ]
        lines.append(
            f"| {m} | {statistics.median(regrets):.3f} | {max(regrets):.3f} "
            f"| {sum(x <= 0.02 for x in regrets)}/{len(cells)} | {sum(behind)}/{len(behind)} "
            f"| {statistics.median(ratios):.3f} | {max(ratios):.3f} "
            f"| {sum(c[m]['collapsed'] for c in cells)} "
            f"| {_mean([c[m]['selection_fb'] for c in cells]):.0f} "
            f"| {_mean([c[m]['selection_seconds'] for c in cells]):.1f} "
            f"| {_mean([c[m]['train_seconds'] for c in cells]):.1f} |"
        )
    return "\n".join(lines)


def per_optimizer(rows: list[dict[str, Any]]) -> str:
    """Median / worst regret of each method, per optimizer and overall."""
    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    lines = [
        "| method | " + " | ".join(optimizers) + " | all |",
        "|---|" + "---|" * (len(optimizers) + 1),
    ]
    for m in dict.fromkeys(r["method"] for r in rows):
        cols = []
        for opt in [*optimizers, None]:
            values = [
                r["regret"] for r in rows if r["method"] == m and opt in (None, r["optimizer"])
            ]
            cols.append(f"{statistics.median(values):.3f} / {max(values):.3f}" if values else "–")
        lines.append(f"| {m} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def flag_table(results: list[tuple[Job, dict[str, Any], float]], rows: list[dict[str, Any]]) -> str:
    """Does a flag predict a worse outcome? For each flag, lrprobe's mean and median regret over
    the runs whose result raised it (on any group) against the runs that did not, the share of
    each above 0.05 regret, and their collapsed runs; the same for the notes on the spread of
    the rates (read off the recommended rates: the spread note, and with momentum the margin
    that halves λ₁), the plateau note (read off its text) and "any note"."""
    by_cell = {(r["task"], r["start"], r["optimizer"]): r for r in rows if r["method"] == "lrprobe"}
    runs: list[tuple[set[str], float, bool]] = []
    for job, out, _ in results:
        cell = by_cell.get((job.task, job.start, job.optimizer))
        seeds = sorted(j.seed for j, _, _ in results if (j.task, j.start, j.optimizer) ==
                       (job.task, job.start, job.optimizer))  # fmt: skip
        if cell is None or "flags" not in out["lrprobe"]:
            continue
        flags = set(out["lrprobe"]["flags"]) | ({"any note"} if out["lrprobe"]["notes"] else set())
        rates = [g["lr"] for g in out["lrprobe"].get("groups", []) if "unused" not in g["flags"]]
        if rate_span(rates) > WIDE_SPREAD:
            flags.add(f"note: rates span > {WIDE_SPREAD:.0f}×")
            if job.optimizer == "momentum":
                flags.add("note: momentum margin applied")
        if any(PLATEAU_MARK in n for n in out["lrprobe"].get("note_texts", [])):
            flags.add("note: plateau")
        i = seeds.index(job.seed)
        runs.append((flags, cell["regret_seeds"][i], cell["collapsed_seeds"][i]))
    lines = ["| flag | runs flagged | mean / median regret, flagged | mean / median regret, not "
             "flagged | share above 0.05, flagged / not | collapsed, flagged / not |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for flag in sorted({f for flags, _, _ in runs for f in flags}):
        yes = _columns([(r, c) for flags, r, c in runs if flag in flags])
        no = _columns([(r, c) for flags, r, c in runs if flag not in flags])
        lines.append(
            f"| {flag} | {yes.count}/{len(runs)} | {yes.regret} | {no.regret} "
            f"| {yes.share} / {no.share} | {yes.collapsed} / {no.collapsed} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class _Columns:
    """One side (flagged or not) of a flag-table row, formatted."""

    count: int
    regret: str  # mean / median
    share: str  # above 0.05 regret
    collapsed: str  # collapsed / runs


def _columns(runs: Sequence[tuple[float, bool]]) -> _Columns:
    regrets = [r for r, _ in runs]
    return _Columns(
        len(runs), _pair(regrets), _share(regrets, 0.05), f"{sum(c for _, c in runs)}/{len(runs)}"
    )


def _share(values: Sequence[float], above: float) -> str:
    return f"{sum(v > above for v in values) / len(values):.0%}" if values else "–"


def _pair(values: Sequence[float]) -> str:
    return f"{_mean(values):.3f} / {statistics.median(values):.3f}" if values else "–"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _stats(values: Sequence[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": _mean(values), "std": std}


def _fmt(s: dict[str, float]) -> str:
    return f"{s['mean']:.4f} ± {s['std']:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, fewer steps")
    parser.add_argument("--tasks", nargs="+", default=None, choices=TASKS)
    parser.add_argument("--optimizers", nargs="+", default=None, choices=OPTIMIZERS)
    parser.add_argument("--starts", nargs="+", default=None, choices=["init", "warm"])
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument(
        "--first-seed", type=int, default=0,
        help="seeds run from here: to confirm a rule on seeds it was not chosen on",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--schedule", default="constant", choices=SCHEDULES,
        help="every method trains under this schedule, its rate the peak (default: constant)",
    )  # fmt: skip
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--partial", type=Path, default=None,
        help="append each finished job here (JSON lines) and skip the jobs already in it",
    )  # fmt: skip
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    steps = args.steps or (100 if args.quick else 300)
    # --quick: one seed, 100 steps, fresh starts, plain SGD and AdamW (explicit flags win).
    optimizers = args.optimizers or (["sgd", "adamw"] if args.quick else list(OPTIMIZERS))
    starts = args.starts or (["init"] if args.quick else ["init", "warm"])
    # --quick leaves out the GPT, by far the slowest task, to stay under 3 minutes.
    tasks = args.tasks or [t for t in TASKS if not (args.quick and t == "gpt-lm")]
    all_jobs = jobs(
        tasks, starts, optimizers, seeds, steps, args.variants, args.first_seed, args.schedule
    )
    started = time.perf_counter()
    results = run(all_jobs, max(1, min(args.workers, 2)), args.partial)
    rows = aggregate(results)
    elapsed = time.perf_counter() - started
    print(table(rows))
    print()
    print(summary(rows))
    print()
    print(per_optimizer(rows))
    print()
    print(flag_table(results, rows))
    print(f"\n{len(all_jobs)} jobs, {elapsed:.0f} s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "config": {
                    "seeds": seeds,
                    "first_seed": args.first_seed,
                    "steps": steps,
                    "quick": args.quick,
                    "schedule": args.schedule,
                    "variants": {v: VARIANTS[v] for v in args.variants},
                },
                "seconds": elapsed,
                "rows": rows,
                "runs": [
                    {"job": asdict(replace(j, variants={})), "seconds": s, "methods": o}
                    for j, o, s in results
                ],
            },
            indent=1,
        )
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
