"""Run one job: claim it, resolve its model and data rows, probe in a supervised process, store
the result.

Every way out of :func:`run_job` leaves the job final or back with its lease holder gone:

- the claim is conditional, so a second delivery of the same message does nothing;
- the probe runs in a child process (:mod:`lrprobe.worker.supervisor`); this process renews
  the lease from a thread, stores the child's progress, and kills the child at the job's time
  limit, on a cancel request or when the claim is lost. Nothing the probe does (a regex that
  never returns, a C kernel that holds the GIL) can stop that;
- an error of the intake or of the numeric core fails the job with its stable code; running out
  of memory (an allocation error, or the child killed by the system) fails it with
  ``out_of_memory``; a crash or anything else fails it with ``internal_error`` and the
  traceback goes to the log;
- if the lease was lost (the reaper gave the job to another worker), nothing is written.

With ``probe_isolation`` off the same probe runs in this process instead, and the time limit
and cancel requests act only between batches (for debugging).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service import lifecycle
from lrprobe.service.broker import job_time_limit
from lrprobe.service.lifecycle import Beat, JobStatus, Progress
from lrprobe.service.models import DatasetArtifact, Job, ModelArtifact
from lrprobe.worker import probe_process, supervisor
from lrprobe.worker.composition import WorkerContext
from lrprobe.worker.jobspec import SpecError, parse_spec, probe_request
from lrprobe.worker.newton import METHOD_VERSION, ProbeProgress
from lrprobe.worker.probe_process import (
    INTERNAL_ERROR_ADVICE,
    Failed,
    JobError,
    Outcome,
    ProbeStopped,
    ProbeWork,
    Succeeded,
    UploadedData,
)

log = logging.getLogger(__name__)

# Progress is stored at most this often (each store is a transaction and a job event).
PROGRESS_INTERVAL_SECONDS = 1.0
# How often the worker looks at its probe process between messages: the time limit, a cancel
# request and a lost claim act within this.
WATCH_INTERVAL_SECONDS = 0.25
# While the database is unreachable, a worker retries its claim and its final write (with
# backoff) for this long instead of dropping the message or a finished probe's result.
DATABASE_RETRY_SECONDS = 600.0

T = TypeVar("T")


def run_job(context: WorkerContext, job_id: str) -> JobStatus | None:
    """Run ``job_id`` if it is still queued; returns its final status, None if not claimed.

    The status is None too when the claim was lost while running (another worker owns the job).
    """
    settings, sessions = context.settings, context.sessions
    if settings.probe_isolation:
        supervisor.warm_up()  # before the claim: the first job's limit does not pay for it
    worker = f"{context.name}:{uuid.uuid4().hex[:8]}"  # one claim, one owner name
    lease_s = settings.lease_seconds
    job = _retrying(lambda: lifecycle.claim(sessions, job_id, worker, lease_s), job_id, "claim")
    if job is None:
        log.info("job %s is not queued any more; nothing to do", job_id)
        return None
    limit = job_time_limit(job.spec, settings)
    watch = _Watch(_Lease(sessions, job_id, worker, lease_s), time.monotonic() + limit)
    watch.lease.start()
    try:
        outcome = _run(context, job, watch)
    except ProbeStopped as stop:
        return _stopped(sessions, job_id, worker, stop.reason, limit)
    except SoftTimeLimitExceeded:  # Celery's backstop, under a prefork pool
        return _fail(sessions, job_id, worker, "time_limit_exceeded", _limit_advice(limit))
    except Exception:  # in this process, around the probe: a bug, never the user's input
        log.exception("job %s failed with an unexpected error", job_id)
        return _fail(sessions, job_id, worker, "internal_error", INTERNAL_ERROR_ADVICE)
    finally:
        watch.lease.stop()
    if isinstance(outcome, Failed):
        return _fail(sessions, job_id, worker, outcome.code, outcome.detail)
    stored = _retrying(
        lambda: lifecycle.succeed(
            sessions, job_id, worker, outcome.recommendation, METHOD_VERSION
        ),
        job_id, "store the result",
    )  # fmt: skip
    if stored:
        return JobStatus.SUCCEEDED
    log.warning("job %s: the claim was lost before the result could be stored", job_id)
    return None


def _run(context: WorkerContext, job: Job, watch: _Watch) -> Outcome:
    try:
        work = _work(context, job)
    except JobError as failure:
        return Failed(failure.code, failure.detail)
    if not context.settings.probe_isolation:
        return probe_process.outcome(work, watch.progress)
    probe = supervisor.start(work)
    try:
        while True:
            message = probe.receive(WATCH_INTERVAL_SECONDS)
            if isinstance(message, Progress):
                watch.store(message)
            elif isinstance(message, Succeeded | Failed):
                probe.finish()
                return message
            watch.check()
    finally:
        probe.kill()


def _work(context: WorkerContext, job: Job) -> ProbeWork:
    """The job's spec and rows, resolved into what the probe process needs."""
    try:
        spec = parse_spec(job.spec)
    except SpecError as exc:
        raise JobError(
            "invalid_spec", f"The stored job spec is not valid ({exc}); submit the job again."
        ) from None
    with context.sessions() as session:
        model_row = session.get(ModelArtifact, job.model_id)
        if model_row is None or model_row.owner_id != job.owner_id:
            raise JobError("model_not_found", "The job's model no longer exists; upload it again.")
        uploaded = _uploaded_data(session, job, spec.data)
        # A Hugging Face archive carries its own architecture: the config.json that the API
        # keeps on the row is a description, not a registry config to build the model from.
        own_arch = model_row.format == "hf"
        arch = None if own_arch else model_row.arch
        arch_config = None if own_arch else (model_row.arch_config or None)
        sha256 = model_row.sha256
    return ProbeWork(
        job_id=job.id, settings=context.settings, checkpoint_sha256=sha256, arch=arch,
        arch_config=arch_config, data=spec.data, uploaded_data=uploaded,
        request=probe_request(spec),
    )  # fmt: skip


def _uploaded_data(session: Session, job: Job, uri: str) -> UploadedData | None:
    if not uri.startswith("upload://"):
        return None
    dataset_id = urlsplit(uri).netloc
    row = session.get(DatasetArtifact, dataset_id)
    if row is None or row.owner_id != job.owner_id:
        raise JobError(
            "dataset_not_found",
            f"There is no uploaded dataset {dataset_id!r}; upload it with POST /v1/datasets "
            "and use the id it returns.",
        )
    return UploadedData(row.sha256, row.format)


# --- lease, progress, cancel and time limit ----------------------------------------------------


class _Lease:
    """Renews the claim every third of the lease from a thread of the worker (never of the
    probe), so a long batch, or a probe that never returns, keeps it until it is killed.

    What a heartbeat learns (cancel requested, claim lost) sticks and is read by :class:`_Watch`.
    """

    def __init__(
        self, sessions: sessionmaker[Session], job_id: str, worker: str, lease_s: float
    ) -> None:
        self.sessions, self.job_id, self.worker, self.lease_s = sessions, job_id, worker, lease_s
        self.verdict = Beat.OK
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def beat(self, progress: Progress | None = None) -> Beat:
        with self._lock:
            if self.verdict is Beat.LOST:
                return Beat.LOST
            try:
                verdict = lifecycle.heartbeat(
                    self.sessions, self.job_id, self.worker, self.lease_s, progress
                )
            except Exception:
                # A database hiccup must not kill the job; the next beat tries again and the
                # lease covers two missed ones.
                log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)
                return self.verdict
            if verdict is not Beat.OK:
                self.verdict = verdict
            return self.verdict

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            if self.beat() is Beat.LOST:
                return


class _Watch:
    """Stores progress (at most once a second) and raises :class:`ProbeStopped` on a cancel
    request, a lost claim or the time limit."""

    def __init__(self, lease: _Lease, deadline: float) -> None:
        self.lease = lease
        self.deadline = deadline
        self.last_store = -float("inf")

    def progress(self, p: ProbeProgress) -> None:
        """The probe's progress callback when it runs in this process."""
        self.store(Progress(p.done, p.total, p.phase))

    def store(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self.last_store >= PROGRESS_INTERVAL_SECONDS or progress.done >= progress.total:
            self.last_store = now
            self.lease.beat(progress)
        self.check()

    def check(self) -> None:
        verdict = self.lease.verdict
        if verdict is Beat.LOST:
            raise ProbeStopped("lost")
        if verdict is Beat.CANCEL:
            raise ProbeStopped("cancel")
        if time.monotonic() > self.deadline:
            raise ProbeStopped("time_limit")


def _stopped(
    sessions: sessionmaker[Session], job_id: str, worker: str, reason: str, limit: float
) -> JobStatus | None:
    if reason == "cancel":
        return (
            JobStatus.CANCELLED if lifecycle.acknowledge_cancel(sessions, job_id, worker) else None
        )
    if reason == "time_limit":
        return _fail(sessions, job_id, worker, "time_limit_exceeded", _limit_advice(limit))
    log.warning("job %s: the claim was lost (the lease expired); stopping", job_id)
    return None


def _fail(
    sessions: sessionmaker[Session], job_id: str, worker: str, code: str, detail: str
) -> JobStatus | None:
    log.info("job %s failed: %s: %s", job_id, code, detail)
    failed = _retrying(
        lambda: lifecycle.fail(sessions, job_id, worker, code, detail), job_id, "store the failure"
    )
    return JobStatus.FAILED if failed else None


def _retrying(action: Callable[[], T], job_id: str, what: str) -> T:
    """``action()`` (one transaction of ``lifecycle``), tried again while the database is
    unreachable. Each transition is conditional, so a retry after a commit whose answer was
    lost is harmless: it reports the claim as gone and writes nothing."""
    deadline = time.monotonic() + DATABASE_RETRY_SECONDS
    delay = 0.5
    while True:
        try:
            return action()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("job %s: cannot %s, the database is unavailable (%s); retrying in %.1f s",
                        job_id, what, type(exc.orig).__name__, delay)  # fmt: skip
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


def _limit_advice(limit: float) -> str:
    return (
        f"The probe did not finish within its time limit of {limit:g} s; lower budget.batches "
        "or budget.batch_size, or raise budget.time_limit_s."
    )
