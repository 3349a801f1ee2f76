"""The job state machine on both databases: claims are exclusive, lost claims write nothing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service import lifecycle
from lrprobe.service.lifecycle import Beat, JobStatus, Progress
from lrprobe.service.models import Job, JobEvent, Recommendation, utcnow
from tests.support.jobs import make_job

# Claims race in threads that start together on a barrier, a few times over.
RACERS, RACES = 8, 5


def status(sessions: sessionmaker[Session], job_id: str) -> str:
    with sessions() as session:
        return session.get_one(Job, job_id).status


def race_to_claim(sessions: sessionmaker[Session], job_id: str, racers: int) -> list[str]:
    """``racers`` workers, each a thread with its own connection, claim ``job_id`` at once;
    returns the names of those whose claim succeeded."""
    start = threading.Barrier(racers)

    def claim(worker: str) -> str | None:
        start.wait()
        return worker if lifecycle.claim(sessions, job_id, worker, lease=60) else None

    with ThreadPoolExecutor(max_workers=racers) as pool:
        return [w for w in pool.map(claim, [f"w{i}" for i in range(racers)]) if w is not None]


def test_only_one_of_several_racing_workers_claims_a_job(sessions: sessionmaker[Session]) -> None:
    for _ in range(RACES):
        job_id = make_job(sessions)
        [winner] = race_to_claim(sessions, job_id, RACERS)
        with sessions() as session:
            job = session.get_one(Job, job_id)
            claims = session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "status")
            ).all()
        assert (job.status, job.attempts, job.lease_owner) == (JobStatus.RUNNING, 1, winner)
        assert [e.data["worker"] for e in claims] == [winner]


def test_success_stores_the_recommendation_once(sessions: sessionmaker[Session]) -> None:
    job_id = make_job(sessions)
    lifecycle.claim(sessions, job_id, "w1", lease=60)
    assert lifecycle.heartbeat(sessions, job_id, "w1", 60, Progress(3, 10, "summaries")) == Beat.OK
    assert lifecycle.succeed(sessions, job_id, "w1", {"lr": 1.0}, "v1")
    assert not lifecycle.succeed(sessions, job_id, "w1", {"lr": 2.0}, "v1")
    with sessions() as session:
        assert session.get_one(Recommendation, job_id).data == {"lr": 1.0}
        job = session.get_one(Job, job_id)
        assert (job.status, job.progress_done, job.progress_total) == ("succeeded", 3, 10)
        kinds = session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id)).all()
        assert kinds == ["status", "progress", "status"]


def test_reaped_job_is_requeued_and_the_old_worker_cannot_finish_it(
    sessions: sessionmaker[Session],
) -> None:
    job_id = make_job(sessions)
    lifecycle.claim(sessions, job_id, "dead", lease=60)
    later = utcnow() + timedelta(seconds=61)
    assert lifecycle.reap(sessions, max_attempts=3, requeue_after=3600, now=later) == [job_id]
    assert status(sessions, job_id) == JobStatus.QUEUED
    assert lifecycle.heartbeat(sessions, job_id, "dead", 60) == Beat.LOST
    assert not lifecycle.succeed(sessions, job_id, "dead", {}, "v1")
    assert lifecycle.claim(sessions, job_id, "alive", lease=60) is not None
    assert lifecycle.succeed(sessions, job_id, "alive", {}, "v1")


def test_a_job_that_keeps_killing_workers_fails_with_a_code(
    sessions: sessionmaker[Session],
) -> None:
    job_id = make_job(sessions, columns={"attempts": 2})
    lifecycle.claim(sessions, job_id, "w", lease=1)
    lifecycle.reap(sessions, max_attempts=3, requeue_after=3600, now=utcnow() + timedelta(hours=1))
    with sessions() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.error_code) == ("failed", "worker_lost")


def test_cancel_is_immediate_when_queued_and_acknowledged_when_running(
    sessions: sessionmaker[Session],
) -> None:
    queued, running = make_job(sessions), make_job(sessions)
    assert lifecycle.request_cancel(sessions, queued) == JobStatus.CANCELLED
    assert lifecycle.claim(sessions, queued, "w", lease=60) is None
    lifecycle.claim(sessions, running, "w", lease=60)
    assert lifecycle.request_cancel(sessions, running) == JobStatus.RUNNING
    assert lifecycle.heartbeat(sessions, running, "w", 60) == Beat.CANCEL
    assert lifecycle.acknowledge_cancel(sessions, running, "w")
    assert status(sessions, running) == JobStatus.CANCELLED
    assert lifecycle.request_cancel(sessions, "missing") is None


def test_jobs_queued_too_long_are_resent(sessions: sessionmaker[Session]) -> None:
    job_id = make_job(sessions)
    assert lifecycle.reap(sessions, max_attempts=3, requeue_after=60) == []
    later = utcnow() + timedelta(seconds=61)
    assert lifecycle.reap(sessions, max_attempts=3, requeue_after=60, now=later) == [job_id]
