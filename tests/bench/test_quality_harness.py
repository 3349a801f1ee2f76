"""The quality benchmark's harness on a tiny configuration: its bookkeeping, not its numbers."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.quality.__main__ import METHODS, METRICS, aggregate, flag_table, main, table
from bench.quality.runner import GRID, PEERS, RANGE_TEST_STEPS, Job, run_job
from bench.quality.tasks import load

STEPS = 12
# What run_job records besides the grid (grid-cv is read off the grid's runs).
RUN_METHODS = [m for m in METHODS if m not in ("grid", "grid-cv")]
TINY = {"steps": 20, "period": 5}  # a short trajectory keeps the test fast


def _job(seed: int = 0, **overrides) -> Job:
    return Job(
        **{
            "task": "breast_cancer-mlp",
            "start": "init",
            "optimizer": "sgd",
            "seed": seed,
            "steps": STEPS,
            "warmup_steps": 5,
            "evals": 3,
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    output = tmp_path_factory.mktemp("quality") / "quality.json"
    main([
        "--quick", "--tasks", "breast_cancer-mlp", "digits-mlp", "--optimizers", "sgd", "momentum",
        "--starts", "init", "warm", "--seeds", "2", "--steps", str(STEPS), "--workers", "1",
        "--output", str(output),
    ])  # fmt: skip
    return json.loads(output.read_text()), str(output)


def test_every_task_start_optimizer_and_method_has_a_row(report) -> None:
    data, _ = report
    seen = {(r["task"], r["start"], r["optimizer"], r["method"]) for r in data["rows"]}
    expected = {
        (t, s, o, m)
        for t in ("breast_cancer-mlp", "digits-mlp")
        for s in ("init", "warm")
        for o in ("sgd", "momentum")
        for m in METHODS
    }
    assert seen == expected
    rendered = table(data["rows"])
    assert all(f"| {m} " in rendered or f"| {m} (" in rendered for m in METHODS)
    for row in data["rows"]:
        assert math.isfinite(row["regret"]) and len(row["regret_seeds"]) == 2
        assert row["train_seconds"] > 0 and row["selection_seconds"] >= 0


def test_selection_compute_is_seven_runs_for_the_grid_and_100_steps_for_the_range_test(
    report,
) -> None:
    data, _ = report
    for row in data["rows"]:
        if row["method"] in ("grid", "grid-cv"):
            assert row["selection_fb"] == len(GRID[row["optimizer"]]) * STEPS == 7 * STEPS
        elif row["method"] == "range-test":
            assert 0 < row["selection_fb"] <= RANGE_TEST_STEPS
        elif row["method"] in ("default", *PEERS):
            assert row["selection_fb"] == 0
        else:
            assert row["selection_fb"] > 0


def test_statistics_cover_every_seed(report) -> None:
    data, _ = report
    assert len(data["runs"]) == 2 * 2 * 2 * 2
    assert data["config"]["seeds"] == 2
    row = next(r for r in data["rows"] if r["method"] == "lrprobe")
    assert len(row["lr"]) == 2 and row["test_best"]["std"] >= 0


def _mean_and_std(values: list[float]) -> dict[str, float]:
    """Computed here, apart from the harness: the mean and the sample (n − 1) deviation."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1))}


def test_each_rows_statistics_are_the_mean_and_std_of_its_runs(report) -> None:
    """Every row recomputed from the per-run records the report also holds."""
    data, _ = report
    runs: dict[tuple[str, str, str], list[dict]] = {}
    for run in data["runs"]:
        job = run["job"]
        runs.setdefault((job["task"], job["start"], job["optimizer"]), []).append(run)
    for row in data["rows"]:
        cell = runs[(row["task"], row["start"], row["optimizer"])]
        assert sorted(r["job"]["seed"] for r in cell) == [0, 1]
        methods = [r["methods"] for r in sorted(cell, key=lambda r: r["job"]["seed"])]
        if row["method"] == "grid":
            # each metric: the grid point whose mean over the seeds is best
            for metric in METRICS:
                per_point = {
                    point: _mean_and_std([m["grid"][point][metric] for m in methods])
                    for point in methods[0]["grid"]
                }
                best = min(per_point.values(), key=lambda s: s["mean"])
                assert row[metric] == pytest.approx(best, rel=1e-12), (row, metric)
            # its rate: the point best on the held-out loss
            test_best = {
                p: np.mean([m["grid"][p]["test_best"] for m in methods]) for p in per_point
            }
            assert float(min(test_best, key=test_best.__getitem__)) == row["lr"]
            continue
        if row["method"] == "grid-cv":
            # each seed's run at the point that is best on the held-out loss of the other seed
            # (the fixture has two seeds, so "the other seeds" is the reversed list)
            records = [
                m["grid"][min(o["grid"], key=lambda p: o["grid"][p]["test_best"])]
                for m, o in zip(methods, methods[::-1], strict=True)
            ]
        else:
            records = [m[row["method"]] for m in methods]
        for metric in METRICS:
            expected = _mean_and_std([r[metric] for r in records])
            assert row[metric] == pytest.approx(expected, rel=1e-12), (row, metric)
        assert row["lr"] == [r["lr"] for r in records]
        assert row["diverged"] == sum(bool(r["diverged"]) for r in records)
        if row["method"] != "grid-cv":
            selection = np.mean([r["selection_fb"] for r in records])
            assert row["selection_fb"] == pytest.approx(selection)
        assert row["regret"] == pytest.approx(np.mean(row["regret_seeds"]))


def _fake(test_best: float, train: float = 1.0) -> dict:
    return {"train": train, "test_final": test_best, "test_best": test_best, "diverged": False,
            "lr": 0.1, "selection_fb": 5, "train_start": 4.0, "test_start": 3.0}  # fmt: skip


def test_grid_row_is_the_best_grid_point_and_ratio_and_regret_are_relative_to_it() -> None:
    fake = {m: _fake(2.0) for m in RUN_METHODS}
    fake["lrprobe-single"] = _fake(1.001 + 0.5 * (3.0 - 1.001))
    fake["default"] = _fake(2.0, train=3.5)  # training loss nearer its start than the grid's
    fake["grid"] = {f"{lr:.3g}": {**_fake(1 + lr), "train": lr} for lr in GRID["sgd"]}
    rows = aggregate([(_job(), fake, 0.0)])
    grid = next(r for r in rows if r["method"] == "grid")
    assert grid["lr"] == pytest.approx(1e-3) and grid["regret"] == 0.0
    by_method = {r["method"]: r for r in rows}
    assert by_method["lrprobe"]["ratio"] == pytest.approx(2.0 / 1.001)
    # regret = (2.0 − 1.001) / (3.0 − 1.001): the share of the grid's improvement it missed
    assert by_method["lrprobe"]["regret"] == pytest.approx(0.999 / 1.999)
    assert by_method["lrprobe-single"]["regret"] == pytest.approx(0.5)
    assert by_method["lrprobe"]["collapsed"] == 0 and by_method["default"]["collapsed"] == 1


def test_regret_is_floored_where_the_grid_barely_moves() -> None:
    fake = {m: _fake(0.5) for m in RUN_METHODS}
    fake["grid"] = {f"{lr:.3g}": _fake(2.99) for lr in GRID["sgd"]}
    rows = aggregate([(_job(), fake, 0.0)])
    assert next(r for r in rows if r["method"] == "lrprobe")["regret"] == -1.0


def test_grid_cv_takes_for_each_seed_the_point_best_on_the_other_seeds() -> None:
    """Seed 0's own best point is 0.01, the others' is 0.1: every seed gets 0.1, which on seed
    0 is the usual reference (the point best on the mean of all seeds) too."""

    def grid(best_01: float, best_001: float) -> dict:
        points = {f"{lr:.3g}": {**_fake(2.5), "lr": lr} for lr in GRID["sgd"]}
        points["0.1"] = {**_fake(best_01), "lr": 0.1}
        points["0.01"] = {**_fake(best_001), "lr": 0.01}
        return points

    def cv_row(grids: list[dict]) -> dict:
        outs = [(_job(seed=seed), {**{m: _fake(2.0) for m in RUN_METHODS}, "grid": g}, 0.0)
                for seed, g in enumerate(grids)]  # fmt: skip
        # in any order: the rows follow the seeds, not the order the jobs finished in
        return next(r for r in aggregate(outs[::-1]) if r["method"] == "grid-cv")

    row = cv_row([grid(1.5, 1.0), grid(1.0, 2.0), grid(1.0, 2.0)])
    assert row["lr"] == [0.1, 0.1, 0.1] and row["regret_seeds"] == pytest.approx([0, 0, 0])
    # Seed 1 is now chosen on seeds 0 and 2, where 0.01 is better on average (1.5 against
    # 1.95); the reference stays 0.1 (1.63 against 1.67), so seed 1 misses (2 − 1) / (3 − 1).
    row = cv_row([grid(1.5, 1.0), grid(1.0, 2.0), grid(2.4, 2.0)])
    assert row["lr"] == [0.1, 0.01, 0.1]
    assert row["regret_seeds"] == pytest.approx([0.0, (2.0 - 1.0) / (3.0 - 1.0), 0.0])


def test_flag_table_sets_flagged_runs_against_the_others_with_their_collapses() -> None:
    """Seed 0 raised the plateau note and collapsed (its training loss stayed at its start);
    seed 1 raised nothing and learned."""
    outs = []
    for seed, (train, notes) in enumerate([(4.0, ["… (a plateau): …"]), (1.0, [])]):
        out = {m: _fake(2.0) for m in RUN_METHODS}
        out["lrprobe"] = {**_fake(2.0 + seed * 0.5, train=train), "flags": [],
                          "notes": len(notes), "note_texts": notes, "groups": []}  # fmt: skip
        out["grid"] = {f"{lr:.3g}": {**_fake(1.0), "train": 1.0} for lr in GRID["sgd"]}
        outs.append((_job(seed=seed), out, 0.0))
    rendered = flag_table(outs, aggregate(outs))
    # regret: (2 − 1) / (3 − 1) = 0.5 for seed 0, (2.5 − 1) / 2 = 0.75 for seed 1
    assert "| note: plateau | 1/2 | 0.500 / 0.500 | 0.750 / 0.750 | 100% / 100% | 1/1 / 0/1 |" in (
        rendered
    )
    assert "| any note | 1/2 |" in rendered


def test_a_job_is_deterministic_for_its_seed() -> None:
    task = load("breast_cancer-mlp")
    job = _job(seed=3, optimizer="adamw", start="warm", variants={"tiny": TINY})
    first, second = run_job(task, job), run_job(task, job)

    def untimed(run: dict) -> dict:
        return {k: v for k, v in run.items() if not k.endswith("seconds")}

    for method in first:
        if method == "grid":
            assert {k: untimed(v) for k, v in first[method].items()} == {
                k: untimed(v) for k, v in second[method].items()
            }
            continue
        assert untimed(first[method]) == untimed(second[method]), method


def test_json_is_written_where_asked(report) -> None:
    data, path = report
    assert Path(path).is_file()
    assert data["config"]["quick"] is True and data["config"]["steps"] == STEPS
    assert data["config"]["schedule"] == "constant"
    assert {"rows", "runs", "seconds"} <= set(data)


def test_first_seed_shifts_the_seeds_of_every_cell() -> None:
    from bench.quality.__main__ import jobs

    shifted = jobs(["wine-mlp"], ["init", "warm"], ["sgd"], 2, STEPS, [], first_seed=3)
    assert sorted({j.seed for j in shifted}) == [3, 4]
    assert len(shifted) == 4  # 2 starts × 2 seeds, as without the shift
    assert [j.seed for j in jobs(["wine-mlp"], ["init"], ["sgd"], 2, STEPS, [])] == [0, 1]


def test_a_reprobe_goes_on_at_new_rates_from_its_step_and_counts_its_passes() -> None:
    from bench.quality.runner import checkpoint, horizon, train

    task = load("breast_cancer-mlp")
    job = _job()
    start = checkpoint(task, job)
    plain = train(task, job, start, 0.05)
    late = train(task, job, start, 0.05, reprobe_at=STEPS)  # new rates after the last step
    early = train(task, job, start, 0.05, reprobe_at=STEPS // 2)
    assert plain.selection_fb == 0 and plain.reprobed_lr is None
    assert late.selection_fb > 0 and early.selection_fb > 0  # the re-probe is selection
    assert early.selection_seconds > 0 and plain.selection_seconds == 0
    untouched = ("train", "test_final", "test_best", "train_fb")
    assert [getattr(late, k) for k in untouched] == [getattr(plain, k) for k in untouched]
    assert early.train != plain.train  # the second half trained at the re-probe's rates
    assert early.reprobed_lr and early.reprobed_lr != [0.05] and not early.reprobe_failures
    assert (horizon("sgd"), horizon("adamw"), horizon("momentum")) == (80, 80, 120)


def test_a_reprobe_variant_adds_its_passes_to_the_first_probes() -> None:
    task = load("breast_cancer-mlp")
    out = run_job(task, _job(variants={"again": {"reprobe_at": STEPS // 2, **TINY}}))
    tiny = run_job(task, _job(variants={"tiny": TINY}))
    assert out["again"]["selection_fb"] > tiny["tiny"]["selection_fb"] > 0
    with pytest.raises(ValueError, match="reprobe_at must be 'horizon' or a step"):
        run_job(task, _job(variants={"bad": {"reprobe_at": "later"}}))


def test_under_a_schedule_every_run_steps_at_its_peak_rate_times_the_schedule() -> None:
    from bench.quality.runner import checkpoint, peer_factory, train
    from lrprobe.worker.newton.schedules import multipliers, warmup_steps

    task = load("breast_cancer-mlp")
    job = _job(steps=40, schedule="cosine")
    start = checkpoint(task, job)
    seen: list[float] = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):  # type: ignore[no-untyped-def, override]
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    train(task, job, start, "recorded", lambda m: Recording(m.parameters(), lr=0.2))
    assert seen == pytest.approx([0.2 * m for m in multipliers("cosine", 40)])
    assert seen[0] < seen[2] == pytest.approx(0.2) and seen[-1] < 0.01
    # Schedule-free follows its own warm-up and no other schedule; Prodigy is told of warm-up.
    warmup = warmup_steps("cosine", 40)
    factory = peer_factory("schedulefree", "sgd", warmup)
    assert factory(task.model(0)).param_groups[0]["warmup_steps"] == warmup == 2
    constant = replace(job, schedule="constant")
    assert train(task, job, start, "sf", factory).test_best == pytest.approx(
        train(task, constant, start, "sf", factory).test_best, rel=0, abs=0
    )
    assert peer_factory("prodigy", "sgd", warmup)(task.model(0)).defaults["safeguard_warmup"]
    assert not peer_factory("prodigy", "sgd")(task.model(0)).defaults["safeguard_warmup"]


def test_the_schedule_reaches_every_job() -> None:
    from bench.quality.__main__ import jobs

    cosine = jobs(["wine-mlp"], ["init"], ["sgd"], 1, STEPS, [], schedule="cosine")
    assert [j.schedule for j in cosine] == ["cosine"]
    assert jobs(["wine-mlp"], ["init"], ["sgd"], 1, STEPS, [])[0].schedule == "constant"


def test_a_scaled_variant_reuses_the_probe_and_scales_both_of_its_rates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench.quality import runner

    probed: list[dict] = []
    real = runner.run_probe

    def counted(task, job, start, kwargs):  # type: ignore[no-untyped-def]
        probed.append(dict(kwargs))
        return real(task, job, start, kwargs)

    monkeypatch.setattr(runner, "run_probe", counted)
    task = load("breast_cancer-mlp")
    out = run_job(task, _job(variants={"same": TINY, "twice": {**TINY, "lr_scale": 2.0}}))
    assert probed == [{}, TINY]  # the default's probe and TINY's, each once
    assert out["same"]["lr"] != out["lrprobe"]["lr"]  # not the default's probe, reused
    assert out["twice"]["lr"] == pytest.approx([2 * lr for lr in out["same"]["lr"]])
    assert out["twice"]["selection_fb"] == out["same"]["selection_fb"]
    assert out["twice"]["scale"] == out["same"]["scale"]
    # The scaled single-group rate is recorded beside it; an unscaled variant has none.
    assert out["twice-single"]["lr"] == pytest.approx(2 * out["same"]["groups"][0]["single"])
    assert "same-single" not in out


def test_a_failed_probe_of_a_scaled_variant_still_records_its_single_group_run() -> None:
    task = load("breast_cancer-mlp")
    out = run_job(task, _job(variants={"bad": {"steps": 1, "lr_scale": 2.0}}))  # steps ≥ 2
    assert out["bad"]["diverged"] and out["bad"]["lr"].startswith("error")
    assert out["bad-single"] == out["bad"]


def test_under_a_schedule_a_reprobe_sets_the_schedules_new_peaks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench.quality import runner

    built: list[torch.optim.lr_scheduler.LambdaLR] = []
    real = runner.warmup_cosine

    def kept(optimizer, steps):  # type: ignore[no-untyped-def]
        built.append(real(optimizer, steps))
        return built[-1]

    monkeypatch.setattr(runner, "warmup_cosine", kept)
    task = load("breast_cancer-mlp")
    job = _job(steps=40, schedule="cosine")
    start = runner.checkpoint(task, job)
    run = runner.train(task, job, start, 0.05, reprobe_at=20)
    (scheduler,) = built
    assert run.reprobed_lr and run.reprobed_lr != [0.05] and not run.reprobe_failures
    # The schedule multiplies the re-probe's rates from then on, not the first ones.
    assert sorted(set(scheduler.base_lrs)) == pytest.approx(run.reprobed_lr)
