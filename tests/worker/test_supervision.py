"""The probe in its supervised child process (``probe_isolation``, the default), run by
``run_job`` in the test's process on SQLite: a probe that never returns, runs out of memory or
dies is ended by the worker, the job fails with its code, and the worker goes on.

The probe that never returns is a real one: a partition regex with catastrophic backtracking
(``((((.+)+)+)+)+Z`` on a parameter name takes hours and holds the GIL all along).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service import lifecycle
from lrprobe.service.lifecycle import JobStatus
from lrprobe.worker.jobspec import SpecError, parse_spec
from lrprobe.worker.runner import WorkerContext, run_job
from tests.support.databases import sessions_for
from tests.support.jobs import make_job
from tests.support.settings import make_settings
from tests.worker.jobs import job_row, store_checkpoint

CATASTROPHIC = {"rule": {"((((.+)+)+)+)+Z": "g"}}
# One activation of this model at batch 1024 is 256 MiB: beyond the memory cap below.
# 74 M parameters (296 MB): the weights, their gradients and the probe's saved checkpoint alone
# pass the cap, so no micro-batch size fits (the probe retries smaller micro-batches first).
HUGE_MODEL = {"sizes": [64, 1_000_000, 10], "activation": "tanh"}
# A probe process's own data segment is ~250 MB (torch); this leaves room for a small probe.
MEMORY_CAP = 800_000_000
LIMIT = 10.0  # seconds: the smallest time_limit_s a job may ask for


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with sessions_for(f"sqlite:///{tmp_path / 'jobs.sqlite'}") as made:
        yield made


def context_for(sessions: sessionmaker[Session], tmp_path: Path, **overrides: Any) -> WorkerContext:
    return WorkerContext.create(make_settings(tmp_path / "data", **overrides), sessions)


def descendants(pid: int) -> set[int]:
    """Every live (not zombie) process below ``pid``."""
    found = set()
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def probe_processes() -> set[int]:
    """The probe children: processes forked by this test process's forkserver."""
    mine = descendants(os.getpid())
    return {p for p in mine if _parent(p) in mine and _is_forkserver(_parent(p))}


def _parent(pid: int) -> int:
    try:
        return psutil.Process(pid).ppid()
    except psutil.NoSuchProcess:
        return -1


def _is_forkserver(pid: int) -> bool:
    try:
        return any("forkserver" in part for part in psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return False


def run_in_thread(context: WorkerContext, job_id: str) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(run_job(context, job_id)))
    thread.start()
    return thread, outcome


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_probe_that_never_returns_is_killed_at_its_limit_and_the_worker_goes_on(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    context = context_for(sessions, tmp_path)
    sha = store_checkpoint(context.settings, tmp_path)
    stuck = make_job(sessions, sha, partition=CATASTROPHIC, budget={"time_limit_s": LIMIT})
    fine = make_job(sessions, sha)

    assert run_job(context, stuck) is JobStatus.FAILED

    job = job_row(sessions, stuck)
    assert (job.status, job.error_code, job.lease_owner) == ("failed", "time_limit_exceeded", None)
    assert job.error_detail and "budget.time_limit_s" in job.error_detail
    assert job.started_at is not None and job.finished_at is not None
    # never before its limit; no upper bound (a loaded machine only makes it later): that the
    # probe, which would run for hours, failed with this code is what shows the limit ended it
    assert (job.finished_at - job.started_at).total_seconds() >= LIMIT
    assert probe_processes() == set()  # the child is gone, not left spinning
    # and the same worker runs the next job
    assert run_job(context, fine) is JobStatus.SUCCEEDED


def test_a_cancel_request_ends_a_probe_that_never_returns(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    context = context_for(sessions, tmp_path, lease_seconds=1.5)
    sha = store_checkpoint(context.settings, tmp_path)
    job_id = make_job(sessions, sha, partition=CATASTROPHIC, budget={"time_limit_s": 600.0})
    thread, outcome = run_in_thread(context, job_id)
    wait_for(lambda: probe_processes(), 60, "the probe process")
    time.sleep(1.0)  # well into the regex

    assert lifecycle.request_cancel(sessions, job_id) is JobStatus.RUNNING
    thread.join(15)  # the next heartbeat (lease / 3) sees the request

    assert outcome == [JobStatus.CANCELLED]
    assert job_row(sessions, job_id).status == "cancelled"
    assert probe_processes() == set()


def test_a_probe_over_the_memory_cap_fails_with_out_of_memory(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    context = context_for(sessions, tmp_path, probe_memory_limit_bytes=MEMORY_CAP)
    huge = make_job(
        sessions, store_checkpoint(context.settings, tmp_path, HUGE_MODEL),
        data="builtin://digits", config=HUGE_MODEL,
        budget={"batches": 4, "batch_size": 1024, "heldout_batches": 1},
    )  # fmt: skip
    fine = make_job(sessions, store_checkpoint(context.settings, tmp_path))

    assert run_job(context, huge) is JobStatus.FAILED
    job = job_row(sessions, huge)
    assert job.error_code == "out_of_memory", job.error_detail
    assert job.error_detail and "lower budget.batch_size" in job.error_detail
    # the cap leaves room for a probe of ordinary size
    assert run_job(context, fine) is JobStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("signum", "code", "says"),
    [
        (signal.SIGSEGV, "internal_error", "SIGSEGV"),
        (signal.SIGKILL, "out_of_memory", "killed by the system"),
    ],
)
def test_a_probe_process_that_dies_fails_its_job_with_a_code(
    sessions: sessionmaker[Session], tmp_path: Path, signum: int, code: str, says: str
) -> None:
    context = context_for(sessions, tmp_path)
    sha = store_checkpoint(context.settings, tmp_path)
    job_id = make_job(sessions, sha, partition=CATASTROPHIC, budget={"time_limit_s": 600.0})
    thread, outcome = run_in_thread(context, job_id)
    wait_for(lambda: probe_processes(), 60, "the probe process")

    for pid in probe_processes():  # a crash, or the kernel's out-of-memory killer
        os.kill(pid, signum)
    thread.join(30)

    assert outcome == [JobStatus.FAILED]
    job = job_row(sessions, job_id)
    assert job.error_code == code
    assert job.error_detail and says in job.error_detail


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ({"a" * 257: "g"}, "at most 256 characters"),
        ({f"^layer{i}\\.": f"g{i}" for i in range(65)}, "at most 64 rules"),
        ({"(": "g"}, "not a valid regular expression"),
    ],
)
def test_partition_regexes_are_bounded_before_they_are_compiled(
    rule: dict[str, str], says: str
) -> None:
    spec = {"model_id": "m", "data": "builtin://iris", "partition": {"rule": rule}}

    with pytest.raises(SpecError, match=says):
        parse_spec(spec)
