"""The job runner in-process, on SQLite and PostgreSQL: every way out leaves the job final.

Rows are created with the ORM as the API would; ``run_job`` runs in the test's process (no
broker: that is what ``tests/e2e`` covers), and its probe in a supervised child process unless
a test patches the probe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service import lifecycle
from lrprobe.service.lifecycle import JobStatus
from lrprobe.service.models import JobEvent, Recommendation
from lrprobe.service.settings import Settings
from lrprobe.worker import pipeline
from lrprobe.worker.newton import METHOD_VERSION, NumericalError
from lrprobe.worker.runner import WorkerContext, run_job
from tests.support.databases import postgres_database, sessions_for
from tests.support.jobs import make_job
from tests.support.settings import make_settings
from tests.worker.jobs import job_row, store_checkpoint

SLOW = {"batches": 256}
# Tests that patch the probe in this process run it here (isolation off); the same ways out
# with the probe in its supervised process are in tests/worker/test_supervision.py.
IN_PROCESS = {"probe_isolation": False}


@pytest.fixture
def slow_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch takes at least 10 ms, so that a probe of 256 batches runs for seconds."""
    real_probe = pipeline.probe

    def slow_probe(*args: Any, progress: Any, **kwargs: Any) -> Any:
        def slowly(p: Any) -> None:
            time.sleep(0.01)
            progress(p)

        return real_probe(*args, progress=slowly, **kwargs)

    monkeypatch.setattr(pipeline, "probe", slow_probe)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    with sessions_for(database_url) as made:
        yield made


def context_for(
    sessions: sessionmaker[Session], tmp_path: Path, **overrides: Any
) -> tuple[WorkerContext, str]:
    settings: Settings = make_settings(tmp_path / "data", **overrides)
    return WorkerContext.create(settings, sessions), store_checkpoint(settings, tmp_path)


def recommendation(sessions: sessionmaker[Session], job_id: str) -> Recommendation | None:
    with sessions() as session:
        return session.get(Recommendation, job_id)


def test_a_job_succeeds_and_stores_its_recommendation(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    context, sha = context_for(sessions, tmp_path)
    job_id = make_job(sessions, sha, partition={"rule": "layer"}, optimizer={"name": "adam"})

    assert run_job(context, job_id) is JobStatus.SUCCEEDED

    job = job_row(sessions, job_id)
    assert (job.status, job.attempts, job.error_code, job.lease_owner) == (
        "succeeded", 1, None, None,
    )  # fmt: skip
    assert job.progress_total > 0 and job.progress_done == job.progress_total
    stored = recommendation(sessions, job_id)
    assert stored is not None and stored.method_version == METHOD_VERSION
    assert [g["name"] for g in stored.data["groups"]] == ["layers.0", "layers.1"]
    with sessions() as session:
        kinds = session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id)).all()
    assert kinds[0] == "status" and "progress" in kinds and kinds[-1] == "status"


def test_running_a_job_twice_is_harmless(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    context, sha = context_for(sessions, tmp_path)
    job_id = make_job(sessions, sha)
    assert run_job(context, job_id) is JobStatus.SUCCEEDED

    assert run_job(context, job_id) is None

    assert job_row(sessions, job_id).attempts == 1
    with sessions() as session:
        query = select(Recommendation).where(Recommendation.job_id == job_id)
        assert len(session.scalars(query).all()) == 1


def test_an_intake_error_fails_the_job_with_its_code(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    context, sha = context_for(sessions, tmp_path)
    job_id = make_job(sessions, sha, data="builtin://no_such_dataset")

    assert run_job(context, job_id) is JobStatus.FAILED

    job = job_row(sessions, job_id)
    assert (job.status, job.error_code) == ("failed", "unknown_builtin_dataset")
    assert job.error_detail and "use" in job.error_detail
    assert recommendation(sessions, job_id) is None


def test_a_model_that_does_not_fit_the_data_fails_with_advice(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    context, sha = context_for(sessions, tmp_path)
    job_id = make_job(sessions, sha, data="builtin://digits")  # 64 features into a 4-input MLP

    assert run_job(context, job_id) is JobStatus.FAILED

    assert job_row(sessions, job_id).error_code == "incompatible_model_input"


@pytest.mark.usefixtures("slow_batches")
def test_a_cancel_request_stops_the_probe_between_batches(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    context, sha = context_for(sessions, tmp_path, **IN_PROCESS)
    job_id = make_job(sessions, sha, budget=SLOW)
    outcome: list[JobStatus | None] = []
    thread = threading.Thread(target=lambda: outcome.append(run_job(context, job_id)))
    thread.start()
    deadline = time.monotonic() + 60
    while job_row(sessions, job_id).progress_done == 0 and time.monotonic() < deadline:
        time.sleep(0.05)

    assert lifecycle.request_cancel(sessions, job_id) is JobStatus.RUNNING
    thread.join(60)

    assert outcome == [JobStatus.CANCELLED]
    job = job_row(sessions, job_id)
    assert job.status == "cancelled" and 0 < job.progress_done < job.progress_total
    assert recommendation(sessions, job_id) is None


@pytest.mark.usefixtures("slow_batches")
def test_a_probe_past_its_time_limit_fails_with_time_limit_exceeded(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    context, sha = context_for(sessions, tmp_path, default_time_limit_seconds=0.5, **IN_PROCESS)
    job_id = make_job(sessions, sha, budget=SLOW)

    assert run_job(context, job_id) is JobStatus.FAILED

    job = job_row(sessions, job_id)
    assert (job.status, job.error_code) == ("failed", "time_limit_exceeded")
    assert job.error_detail and "budget.time_limit_s" in job.error_detail
    assert job.progress_done < job.progress_total


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NumericalError("non_finite_loss", "The loss is not finite."), "non_finite_loss"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), "out_of_memory"),
        (MemoryError(), "out_of_memory"),
        (RuntimeError("a bug"), "internal_error"),
    ],
)
def test_errors_in_the_probe_fail_the_job_with_a_code(
    sessions: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
    code: str,
) -> None:
    context, sha = context_for(sessions, tmp_path, **IN_PROCESS)
    job_id = make_job(sessions, sha)

    def broken_probe(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(pipeline, "probe", broken_probe)

    assert run_job(context, job_id) is JobStatus.FAILED

    job = job_row(sessions, job_id)
    assert (job.status, job.error_code, job.lease_owner) == ("failed", code, None)
    assert job.error_detail


def test_a_worker_whose_claim_was_taken_over_writes_nothing(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, sha = context_for(sessions, tmp_path, **IN_PROCESS)
    job_id = make_job(sessions, sha)
    real_probe = pipeline.probe

    def probe_then_lose_the_lease(*args: Any, **kwargs: Any) -> Any:
        result = real_probe(*args, **kwargs)
        with sessions.begin() as session:  # the reaper gave the job to another worker
            job = session.get_one(lifecycle.Job, job_id)
            job.lease_owner = "someone-else"
        return result

    monkeypatch.setattr(pipeline, "probe", probe_then_lose_the_lease)

    assert run_job(context, job_id) is None

    assert job_row(sessions, job_id).status == "running"
    assert recommendation(sessions, job_id) is None


def test_a_job_with_decay_and_no_decay_groups_probes_each_with_its_own_decay(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    context, sha = context_for(sessions, tmp_path)
    no_decay = ["layers.0.bias", "layers.1.bias"]
    optimizer = {"name": "adamw", "weight_decay": 0.1,
                 "param_groups": [{"params": no_decay, "weight_decay": 0.0}]}  # fmt: skip
    job_id = make_job(sessions, sha, optimizer=optimizer)

    assert run_job(context, job_id) is JobStatus.SUCCEEDED
    stored = recommendation(sessions, job_id)
    assert stored is not None
    assert stored.data["optimizer"]["param_groups"] == [{"params": no_decay, "weight_decay": 0.0}]


def test_a_group_naming_a_parameter_the_model_lacks_fails_the_job_with_advice(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    context, sha = context_for(sessions, tmp_path)
    optimizer = {"name": "rmsprop", "param_groups": [{"params": ["nope"], "weight_decay": 0.1}]}
    job_id = make_job(sessions, sha, optimizer=optimizer)

    assert run_job(context, job_id) is JobStatus.FAILED
    job = job_row(sessions, job_id)
    assert job.error_code == "invalid_probe_arguments"
    assert "named_parameters()" in job.error_detail
