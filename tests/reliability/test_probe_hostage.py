"""A probe can never hold a worker hostage (issue 16, finding 2), on the production stack: a real
Celery worker (``--pool=solo``, where Celery's own time limits do not apply) on PostgreSQL and
Redis.

A partition regex with catastrophic backtracking holds the GIL for hours. The worker runs the
probe in a child process, keeps the lease from its own process, kills the child at the job's
time limit, and takes the next job, another key's, which completes.
"""

from __future__ import annotations

import pytest

from lrprobe.service.broker import send_job
from tests.reliability.conftest import Stack
from tests.support.jobs import make_job

pytestmark = [
    pytest.mark.slow,
    # kombu 5.7's SQLAlchemy transport declares its models with a loader strategy that
    # SQLAlchemy 2.1 deprecates (imported with Celery's transports); not ours to change.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

LIMIT = 10.0  # the job's time_limit_s


def test_a_catastrophic_regex_fails_at_its_limit_and_another_key_s_job_completes(
    stack: Stack,
) -> None:
    worker = stack.worker()
    stack.reaper()
    sha = stack.checkpoint()
    # Given one worker, a job whose partition regex never finishes, and another key's job
    hostile = make_job(
        stack.sessions, sha, partition={"rule": {"((((.+)+)+)+)+Z": "g"}},
        budget={"time_limit_s": LIMIT},
    )  # fmt: skip
    other = make_job(stack.sessions, sha)
    assert stack.job(hostile).owner_id != stack.job(other).owner_id
    send_job(stack.celery, hostile, time_limit_s=LIMIT)
    send_job(stack.celery, other)

    jobs = stack.wait_final([hostile, other], 120)

    failed, done = jobs
    assert (failed.status, failed.error_code, failed.attempts) == (
        "failed", "time_limit_exceeded", 1,
    ), f"{failed.error_detail}\n{stack.processes.logs()}"  # fmt: skip
    assert failed.started_at is not None and failed.finished_at is not None
    # never before its limit; no upper bound (a loaded machine only makes it later): that the
    # probe, which would run for hours, failed with this code on its first attempt is what shows
    # the limit ended it, and the other job, taken by the same worker after it, that the
    # worker was not held
    took = (failed.finished_at - failed.started_at).total_seconds()
    assert took >= LIMIT, took
    assert done.status == "succeeded", done.error_detail
    assert done.started_at is not None and done.started_at >= failed.finished_at
    assert worker.poll() is None  # the same worker, still up
