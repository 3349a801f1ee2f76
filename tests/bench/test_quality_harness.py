"""The quality benchmark's harness on a tiny configuration: its bookkeeping, not its numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.quality.__main__ import METHODS, aggregate, main, table
from bench.quality.runner import GRID, RANGE_TEST_STEPS, Job, run_job
from bench.quality.tasks import load

STEPS = 12
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


def test_selection_compute_is_seven_runs_for_the_grid_and_100_steps_for_the_range_test(
    report,
) -> None:
    data, _ = report
    for row in data["rows"]:
        if row["method"] == "grid":
            assert row["selection_fb"] == len(GRID[row["optimizer"]]) * STEPS == 7 * STEPS
        elif row["method"] == "range-test":
            assert row["selection_fb"] == RANGE_TEST_STEPS
        elif row["method"] == "default":
            assert row["selection_fb"] == 0
        else:
            assert row["selection_fb"] > 0


def test_statistics_cover_every_seed(report) -> None:
    data, _ = report
    assert len(data["runs"]) == 2 * 2 * 2 * 2
    assert data["config"]["seeds"] == 2
    row = next(r for r in data["rows"] if r["method"] == "lrprobe")
    assert len(row["lr"]) == 2 and row["test_best"]["std"] >= 0


def test_grid_row_is_the_best_grid_point_and_ratio_is_relative_to_it() -> None:
    fake = {m: {"train": 1.0, "test_final": 1.0, "test_best": 2.0, "diverged": False,
                "lr": 0.1, "selection_fb": 5} for m in METHODS if m != "grid"}  # fmt: skip
    fake["grid"] = {f"{lr:.3g}": {"train": lr, "test_final": lr, "test_best": 1 + lr,
                                  "diverged": False, "lr": lr, "selection_fb": 0}
                    for lr in GRID["sgd"]}  # fmt: skip
    rows = aggregate([(_job(), fake, 0.0)])
    grid = next(r for r in rows if r["method"] == "grid")
    assert grid["lr"] == pytest.approx(1e-3)
    probe = next(r for r in rows if r["method"] == "lrprobe")
    assert probe["ratio"] == pytest.approx(2.0 / 1.001)


def test_a_job_is_deterministic_for_its_seed() -> None:
    task = load("breast_cancer-mlp")
    job = _job(seed=3, optimizer="adamw", start="warm", variants={"tiny": TINY})
    first, second = run_job(task, job), run_job(task, job)
    for method in first:
        if method == "grid":
            assert first[method] == second[method]
            continue
        a = {k: v for k, v in first[method].items() if k != "selection_seconds"}
        b = {k: v for k, v in second[method].items() if k != "selection_seconds"}
        assert a == b, method


def test_json_is_written_where_asked(report) -> None:
    data, path = report
    assert Path(path).is_file()
    assert data["config"]["quick"] is True and data["config"]["steps"] == STEPS
    assert {"rows", "runs", "seconds"} <= set(data)
