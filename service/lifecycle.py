"""The job state machine, shared by the API, the workers and the reaper.

    queued ──claim──▶ running ──succeed──▶ succeeded
      │                 │ ├──fail──────▶ failed
      │                 │ └──cancel ack─▶ cancelled
      └──cancel─────────┴─▶ cancelled (queued: at once; running: the worker stops at its next
                                       batch)
    running with an expired lease ──reap──▶ queued (or failed "worker_lost" after max attempts)

Every transition is one conditional UPDATE in its own transaction, so delivering a message twice,
two workers racing for one job, or a worker finishing after its lease was taken over are all
harmless: only the holder of a live claim can change a running job. Each transition also records
a job event (what the event stream and the dashboard show).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import CursorResult, Update, select, update
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service.models import Job, JobEvent, Recommendation, utcnow
from lrprobe.service.notify import job_topic, touch


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Beat(StrEnum):
    """What a worker's heartbeat learns."""

    OK = "ok"
    CANCEL = "cancel"  # the user asked to cancel: stop and acknowledge
    LOST = "lost"  # the claim is gone (lease expired and was reaped): stop, write nothing


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    phase: str


def new_id() -> str:
    return uuid.uuid4().hex


def record(session: Session, job_id: str, kind: str, **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))
    touch(session, job_topic(job_id))


def claim(sessions: sessionmaker[Session], job_id: str, worker: str, lease: float) -> Job | None:
    """Take a queued job; None if it is not queued any more (already taken, final, cancelled)."""
    now = utcnow()
    with sessions.begin() as session:
        result = _update(
            session,
            update(Job)
            .where(
                Job.id == job_id, Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False)
            )
            .values(
                status=JobStatus.RUNNING,
                lease_owner=worker,
                lease_expires_at=now + timedelta(seconds=lease),
                attempts=Job.attempts + 1,
                started_at=now,
            ),
        )
        if result != 1:
            return None
        # ``worker`` (host:PID) is for operators: list_events leaves it out of what users see.
        record(session, job_id, "status", status=JobStatus.RUNNING, worker=worker)
        return session.get(Job, job_id)


def heartbeat(
    sessions: sessionmaker[Session],
    job_id: str,
    worker: str,
    lease: float,
    progress: Progress | None = None,
) -> Beat:
    """Renew the lease (and store progress); tells the worker whether to go on."""
    values: dict[str, Any] = {"lease_expires_at": utcnow() + timedelta(seconds=lease)}
    if progress is not None:
        values |= {
            "progress_done": progress.done,
            "progress_total": progress.total,
            "progress_phase": progress.phase,
        }
    with sessions.begin() as session:
        if _update(session, _held(job_id, worker).values(**values)) != 1:
            return Beat.LOST
        if progress is not None:
            record(
                session, job_id, "progress",
                done=progress.done, total=progress.total, phase=progress.phase,
            )  # fmt: skip
        cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
        return Beat.CANCEL if cancel else Beat.OK


def succeed(
    sessions: sessionmaker[Session],
    job_id: str,
    worker: str,
    recommendation: dict[str, Any],
    method_version: str,
) -> bool:
    """Store the recommendation and finish the job, atomically; False if the claim was lost."""
    with sessions.begin() as session:
        done = _finish(session, job_id, worker, JobStatus.SUCCEEDED)
        if done:
            session.add(
                Recommendation(job_id=job_id, method_version=method_version, data=recommendation)
            )
        return done


def fail(sessions: sessionmaker[Session], job_id: str, worker: str, code: str, detail: str) -> bool:
    with sessions.begin() as session:
        return _finish(session, job_id, worker, JobStatus.FAILED, code=code, detail=detail)


def acknowledge_cancel(sessions: sessionmaker[Session], job_id: str, worker: str) -> bool:
    with sessions.begin() as session:
        return _finish(session, job_id, worker, JobStatus.CANCELLED)


def request_cancel(sessions: sessionmaker[Session], job_id: str) -> JobStatus | None:
    """Cancel a queued job at once, or ask the worker of a running one to stop.

    Returns the status after the request (None if the job does not exist); final jobs are left
    as they are.
    """
    now = utcnow()
    with sessions.begin() as session:
        queued = _update(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.CANCELLED, finished_at=now, cancel_requested=True),
        )
        if queued == 1:
            record(session, job_id, "status", status=JobStatus.CANCELLED)
            return JobStatus.CANCELLED
        running = _update(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True),
        )
        if running == 1:
            record(session, job_id, "status", status=JobStatus.RUNNING, cancel_requested=True)
            return JobStatus.RUNNING
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        return None if status is None else JobStatus(status)


def reap(
    sessions: sessionmaker[Session],
    *,
    max_attempts: int,
    requeue_after: float,
    now: datetime | None = None,
) -> list[str]:
    """Put jobs whose worker died back in the queue, fail those that keep killing workers, and
    return the ids to (re)send to the broker: requeued jobs and jobs queued for too long."""
    now = now or utcnow()
    resend: list[str] = []
    with sessions.begin() as session:
        expired = session.execute(
            select(Job.id, Job.attempts, Job.cancel_requested)
            .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        ).all()
        for job_id, attempts, cancel in expired:
            stale = update(Job).where(
                Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_expires_at < now
            )
            if cancel or attempts >= max_attempts:
                status = JobStatus.CANCELLED if cancel else JobStatus.FAILED
                code = None if cancel else "worker_lost"
                detail = (
                    None
                    if cancel
                    else (
                        f"the worker running this job stopped responding {attempts} times; the "
                        "model may exhaust the worker's memory: try a smaller batch size or model"
                    )
                )
                values = dict(status=status, finished_at=now, lease_owner=None,
                              error_code=code, error_detail=detail)  # fmt: skip
                if _update(session, stale.values(**values)) == 1:
                    record(session, job_id, "status", status=status, error_code=code)
            else:
                values = dict(status=JobStatus.QUEUED, lease_owner=None, lease_expires_at=None,
                              queued_at=now)  # fmt: skip
                if _update(session, stale.values(**values)) == 1:
                    record(session, job_id, "status", status=JobStatus.QUEUED, reason="requeued")
                    resend.append(job_id)
        cutoff = now - timedelta(seconds=requeue_after)
        lost = session.scalars(
            select(Job.id).where(Job.status == JobStatus.QUEUED, Job.queued_at < cutoff)
        ).all()
        if lost:
            session.execute(update(Job).where(Job.id.in_(lost)).values(queued_at=now))
            resend.extend(lost)
    return resend


def _held(job_id: str, worker: str) -> Update:
    return update(Job).where(
        Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == worker
    )


def _finish(
    session: Session,
    job_id: str,
    worker: str,
    status: JobStatus,
    code: str | None = None,
    detail: str | None = None,
) -> bool:
    values = dict(status=status, finished_at=utcnow(), lease_owner=None, lease_expires_at=None,
                  error_code=code, error_detail=detail)  # fmt: skip
    if _update(session, _held(job_id, worker).values(**values)) != 1:
        return False
    record(session, job_id, "status", status=status, error_code=code)
    return True


def _update(session: Session, statement: Any) -> int:
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    return result.rowcount
