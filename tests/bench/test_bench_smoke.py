"""The benchmarks still run: ``bench.core``, ``bench.large`` and ``bench.load`` on the smallest
configuration each takes, as a user runs them (``python -m``), checked for the rows they print,
not for their figures (those are machine-dependent and belong in the README, not in a test)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_bench_core_prints_and_writes_one_row_per_configuration(tmp_path: Path) -> None:
    rows_file = tmp_path / "core.json"
    out = _run("bench.core", "--quick", "--models", "mlp", "--sizes", "2", "--no-memory",
               "--json", str(rows_file))  # fmt: skip
    [line] = [line for line in out.splitlines() if line.startswith("| mlp ")]
    assert line.split("|")[2].strip() == "2"
    [row] = json.loads(rows_file.read_text())
    assert row["config"] == {"model": "mlp", "S": 2, "width": 64, "batch": 64}
    for method in ("gH", "gHd3", "published_gH", "published_gHd3"):
        assert math.isfinite(row[method]) and row[method] > 0, method


def test_bench_core_measures_the_peak_memory_of_one_call() -> None:
    from bench.core import Config, measure_peak, runners

    run = runners(Config("mlp", 2, 8, 8), "cpu")
    assert measure_peak(run["gHd3"], "cpu") >= 0


# A 2-block GPT-2 of width 32, 2 trajectory steps, 1 calibration step per candidate.
LARGE = ("bench.large", "--layers", "2", "--width", "32", "--heads", "2", "--steps", "2",
         "--calibration-steps", "1", "--tokens", "20000")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--service"]], ids=["cli", "service"])
def test_bench_large_probes_a_small_gpt2_through_the_cli_and_the_service(
    tmp_path: Path, mode: list[str]
) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "large.json"
    printed = _run(*LARGE, *mode, "--out", str(out))
    report = json.loads(out.read_text())
    assert "groups: 15" in printed
    assert report["mode"] == ("service" if mode else "cli")
    # 2 steps and 3 calibration runs of 1 step each: the job kept its calibration length.
    assert report["passes"]["forward_backward"] == 6
    assert report["peak_rss_mib"] > 0
    if mode:
        service = report["service"]
        assert service["model_format"] == "hf" and service["attempts"] == 1
        assert service["peak_rss_by_role_mib"]["probe"] == report["peak_rss_mib"]
        assert service["tree_peak_rss_mib"] >= report["peak_rss_mib"]


def _needs_wrk() -> None:
    if shutil.which("wrk") is None:
        pytest.skip("bench.load needs wrk (Debian: apt-get install wrk)")


# The smallest load: a few jobs, one API process, 1 s per measurement.
LOAD = ("bench.load", "--jobs", "200", "--api-workers", "1", "--connections", "4",
        "--seconds", "1", "--streams", "20", "--changes", "2", "--idle-seconds", "1",
        "--replica-seconds", "1")  # fmt: skip


def test_bench_load_measures_every_route_without_errors() -> None:
    _needs_wrk()
    out = _run(*LOAD, "--only", "routes")
    rows = {
        cells[0]: cells[1:]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| route")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {
        "bare FastAPI route (before)", "GET /v1/jobs/{id}", "GET /v1/jobs?limit=50",
        "GET /v1/jobs?limit=50&cursor=…", "GET /v1/jobs?status=failed", "POST /v1/jobs",
        "bare FastAPI route (after)",
    }  # fmt: skip
    for name, (rps, _p50, _p99, _share, errors) in rows.items():
        # every request answered 2xx: a route that failed would still "measure" a rate
        assert float(rps.replace(",", "")) > 0 and errors == "0", (name, rps, errors)


def test_bench_load_measures_idle_streams_and_the_latency_of_a_status_change() -> None:
    _needs_wrk()
    out = _run(*LOAD, "--only", "streams")
    assert re.search(r"^\| 20 idle event streams: database transactions/s \| [\d.]+ ", out, re.M)
    assert re.search(r"^\| status change → open stream, median of 2 \| [\d.]+ ms", out, re.M)


def test_bench_load_measures_two_replicas_under_one_shared_limit() -> None:
    _needs_wrk()
    out = _run(*LOAD, "--only", "replicas")
    served = re.search(r"^\| two replicas, .* \| (\d+) served, (\d+) refused \(429\) \|", out, re.M)
    assert served is not None, out
    assert int(served[1]) > 0
