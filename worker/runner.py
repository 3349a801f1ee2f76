"""Run one job: claim it, load its model and data through the intake, probe, store the result.

Every way out of :func:`run_job` leaves the job final or back with its lease holder gone:

- the claim is conditional, so a second delivery of the same message does nothing;
- a thread renews the lease while a batch runs; the probe's progress callback stores progress,
  learns about cancel requests and lost claims, and enforces the job's time limit between
  batches (by raising :class:`ProbeStopped`, which the probe lets through after restoring the
  model);
- an error of the intake or of the numeric core fails the job with its stable code; running out
  of memory fails it with ``out_of_memory``; anything else fails it with ``internal_error`` and
  the traceback goes to the log;
- if the lease was lost (the reaper gave the job to another worker), nothing is written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import torch
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service import lifecycle
from lrprobe.service.artifacts import ArtifactStore
from lrprobe.service.lifecycle import Beat, JobStatus, Progress
from lrprobe.service.models import DatasetArtifact, Job, ModelArtifact
from lrprobe.service.settings import Settings
from lrprobe.worker.intake.checkpoints import load_checkpoint
from lrprobe.worker.intake.data_policy import DataPolicy
from lrprobe.worker.intake.dataset import Dataset
from lrprobe.worker.intake.datasets import open_dataset
from lrprobe.worker.intake.errors import IntakeError
from lrprobe.worker.jobspec import SpecError, parse_spec
from lrprobe.worker.newton import (
    METHOD_VERSION,
    NumericalError,
    OptimizerSpec,
    ParamGroupSpec,
    ProbeProgress,
)
from lrprobe.worker.pipeline import ProbeRequest, run_probe

log = logging.getLogger(__name__)

# Progress is stored at most this often (each store is a transaction and a job event).
PROGRESS_INTERVAL_SECONDS = 1.0
# After the time limit, how long a batch that never returns may run before the lease thread
# fails the job itself (the in-process backstop where Celery's hard limit does not apply).
STUCK_BATCH_GRACE_SECONDS = 120.0
# While the database is unreachable, a worker retries its claim and its final write (with
# backoff) for this long instead of dropping the message or a finished probe's result.
DATABASE_RETRY_SECONDS = 600.0
# How CPU allocators (torch's "DefaultCPUAllocator: can't allocate memory") and CUDA phrase an
# allocation failure that reaches Python as a plain RuntimeError.
_OUT_OF_MEMORY_MESSAGES = ("can't allocate memory", "out of memory", "cannot allocate memory")

T = TypeVar("T")


class ProbeStopped(Exception):  # noqa: N818 - it is a signal, not an error
    """Raised from the progress callback to stop the probe between batches."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "cancel" | "lost" | "time_limit"


class JobError(Exception):
    """A failure with a stable code and a sentence of advice for the user."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class WorkerContext:
    """What a worker process needs to run jobs; built once per process."""

    settings: Settings
    sessions: sessionmaker[Session]
    name: str  # this process, as shown in lease_owner

    @classmethod
    def create(cls, settings: Settings, sessions: sessionmaker[Session]) -> WorkerContext:
        return cls(settings, sessions, f"{socket.gethostname()}:{os.getpid()}")


def run_job(context: WorkerContext, job_id: str) -> JobStatus | None:
    """Run ``job_id`` if it is still queued; returns its final status, None if not claimed.

    The status is None too when the claim was lost while running (another worker owns the job).
    """
    settings, sessions = context.settings, context.sessions
    worker = f"{context.name}:{uuid.uuid4().hex[:8]}"  # one claim, one owner name
    lease_s = settings.lease_seconds
    job = _retrying(lambda: lifecycle.claim(sessions, job_id, worker, lease_s), job_id, "claim")
    if job is None:
        log.info("job %s is not queued any more; nothing to do", job_id)
        return None
    started = time.monotonic()
    limit = _time_limit(job, settings)
    lease = _Lease(sessions, job_id, worker, lease_s, hard_deadline=started + limit)
    lease.start()
    try:
        recommendation = _run(context, job, lease, deadline=started + limit, limit=limit)
    except ProbeStopped as stop:
        return _stopped(sessions, job_id, worker, stop.reason, limit)
    except JobError as failure:
        return _fail(sessions, job_id, worker, failure.code, failure.detail)
    except SoftTimeLimitExceeded:
        return _fail(sessions, job_id, worker, "time_limit_exceeded", _limit_advice(limit))
    except Exception as exc:
        if _out_of_memory(exc):
            log.warning("job %s ran out of memory", job_id, exc_info=True)
            return _fail(
                sessions, job_id, worker, "out_of_memory",
                "The probe ran out of memory; lower budget.batch_size or use a smaller model.",
            )  # fmt: skip
        log.exception("job %s failed with an unexpected error", job_id)
        return _fail(
            sessions, job_id, worker, "internal_error",
            "The worker hit an unexpected error (it is in the worker's log); retry the job, and "
            "report it if it happens again.",
        )  # fmt: skip
    finally:
        lease.stop()
    stored = _retrying(
        lambda: lifecycle.succeed(sessions, job_id, worker, recommendation, METHOD_VERSION),
        job_id, "store the result",
    )  # fmt: skip
    if stored:
        return JobStatus.SUCCEEDED
    log.warning("job %s: the claim was lost before the result could be stored", job_id)
    return None


def _run(
    context: WorkerContext, job: Job, lease: _Lease, *, deadline: float, limit: float
) -> dict[str, Any]:
    settings, sessions = context.settings, context.sessions
    try:
        spec = parse_spec(job.spec)
    except SpecError as exc:
        raise JobError(
            "invalid_spec", f"The stored job spec is not valid ({exc}); submit the job again."
        ) from None
    with sessions() as session:
        model_row = session.get(ModelArtifact, job.model_id)
        if model_row is None or model_row.owner_id != job.owner_id:
            raise JobError("model_not_found", "The job's model no longer exists; upload it again.")
        session.expunge(model_row)
    request = ProbeRequest(
        loss=spec.loss,
        optimizer=_optimizer(spec.optimizer),
        partition=spec.partition.rule,
        max_groups=spec.partition.max_groups,
        batches=spec.budget.batches,
        batch_size=spec.budget.batch_size,
        heldout_batches=spec.budget.heldout_batches,
        block_size=spec.block_size,
        seed=spec.seed,
        device=spec.device,
    )
    try:
        loaded = load_checkpoint(
            artifact_file(settings, model_row.sha256),
            arch=model_row.arch,
            # A Hugging Face upload's stored config is a summary for display; the archive
            # carries the architecture, and the loader refuses a second one.
            arch_config=None if model_row.format == "hf" else model_row.arch_config or None,
            max_bytes=settings.max_upload_bytes,
            allow_pt2=settings.allow_pt2,
        )
        dataset = _open_data(context, job, spec.data, spec.block_size)
    except IntakeError as exc:
        raise JobError(exc.code, exc.message) from None

    progress = _ProgressCallback(lease, deadline)
    progress.check()  # loading may have used up the budget or seen a cancel
    try:
        result = run_probe(loaded.model, dataset, request, progress)
    except NumericalError as exc:
        raise JobError(
            exc.code,
            f"{str(exc).rstrip('.')}. Lower the checkpoint's loss scale or check the data and "
            "loss for non-finite values.",
        ) from None
    except IntakeError as exc:  # model, data and loss checked against each other, per batch
        raise JobError(exc.code, exc.message) from None
    except ValueError as exc:  # the core's argument checks name what to change
        raise JobError("invalid_probe_arguments", f"{exc}.") from None
    return result.to_dict()


# --- lease, progress, cancel and time limit ----------------------------------------------------


class _Lease:
    """Renews the claim every third of the lease from a thread, so a long batch keeps it.

    What a heartbeat learns (cancel requested, claim lost) sticks and is read by the progress
    callback between batches. Past ``hard_deadline`` plus a grace, a batch is taken to be stuck:
    the thread fails the job itself and stops renewing.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        worker: str,
        lease_s: float,
        *,
        hard_deadline: float,
    ) -> None:
        self.sessions, self.job_id, self.worker, self.lease_s = sessions, job_id, worker, lease_s
        self.hard_deadline = hard_deadline + STUCK_BATCH_GRACE_SECONDS
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
            if time.monotonic() > self.hard_deadline:
                with self._lock:
                    if self.verdict is not Beat.LOST:
                        log.error("job %s: a batch ran past the time limit", self.job_id)
                        lifecycle.fail(
                            self.sessions, self.job_id, self.worker, "time_limit_exceeded",
                            "A single batch ran far past the time limit; lower "
                            "budget.batch_size or raise budget.time_limit_s.",
                        )  # fmt: skip
                        self.verdict = Beat.LOST
                return
            if self.beat() is Beat.LOST:
                return


class _ProgressCallback:
    def __init__(self, lease: _Lease, deadline: float) -> None:
        self.lease = lease
        self.deadline = deadline
        self.last_store = -float("inf")

    def __call__(self, p: ProbeProgress) -> None:
        now = time.monotonic()
        if now - self.last_store >= PROGRESS_INTERVAL_SECONDS or p.done >= p.total:
            self.last_store = now
            self.lease.beat(Progress(p.done, p.total, p.phase))
        self.check(now)

    def check(self, now: float | None = None) -> None:
        verdict = self.lease.verdict
        if verdict is Beat.LOST:
            raise ProbeStopped("lost")
        if verdict is Beat.CANCEL:
            raise ProbeStopped("cancel")
        if (time.monotonic() if now is None else now) > self.deadline:
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


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(
        message in str(exc).lower() for message in _OUT_OF_MEMORY_MESSAGES
    )


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


def _time_limit(job: Job, settings: Settings) -> float:
    budget = job.spec.get("budget") if isinstance(job.spec, dict) else None
    limit = budget.get("time_limit_s") if isinstance(budget, dict) else None
    if isinstance(limit, int | float) and not isinstance(limit, bool) and limit > 0:
        return float(limit)
    return settings.default_time_limit_seconds


def _limit_advice(limit: float) -> str:
    return (
        f"The probe did not finish within its time limit of {limit:g} s; lower budget.batches "
        "or budget.batch_size, or raise budget.time_limit_s."
    )


# --- model, data and device ----------------------------------------------------------------


def _optimizer(spec: Any) -> OptimizerSpec:
    groups = tuple(
        ParamGroupSpec(
            tuple(group.params),
            {
                **{k: getattr(group, k) for k in _GROUP_FIELDS if getattr(group, k) is not None},
                **group.options,
            },
        )
        for group in spec.param_groups
    )
    return OptimizerSpec(
        name=spec.name,
        momentum=spec.momentum,
        dampening=spec.dampening,
        nesterov=spec.nesterov,
        betas=tuple(spec.betas),
        eps=spec.eps,
        weight_decay=spec.weight_decay,
        options=dict(spec.options),
        param_groups=groups,
    )


_GROUP_FIELDS = ("momentum", "dampening", "nesterov", "betas", "eps", "weight_decay")


def _open_data(context: WorkerContext, job: Job, uri: str, block_size: int | None) -> Dataset:
    settings = context.settings
    roots = [Path(root).resolve() for root in settings.data_roots]
    if uri.startswith("upload://"):
        parts = urlsplit(uri)
        with context.sessions() as session:
            row = session.get(DatasetArtifact, parts.netloc)
            if row is None or row.owner_id != job.owner_id:
                raise IntakeError(
                    "dataset_not_found",
                    f"There is no uploaded dataset {parts.netloc!r}; upload it with "
                    "POST /v1/datasets and use the id it returns.",
                )
            sha256, fmt = row.sha256, row.format
        path = artifact_file(settings, sha256)
        roots.append(path.parent.resolve())
        query = "&".join(q for q in (f"format={fmt}" if fmt else "", parts.query) if q)
        uri = urlunsplit(("file", "", str(path.resolve()), query, parts.fragment))
    policy = DataPolicy(
        roots=tuple(roots),
        allowed_hosts=tuple(settings.allowed_data_hosts),
        allow_private_addresses=settings.allow_private_addresses,
        max_bytes=settings.max_upload_bytes,
        cache_dir=settings.data_dir.resolve() / "cache" / "data",
    )
    return open_dataset(uri, policy, block_size=block_size)


def artifact_file(settings: Settings, sha256: str) -> Path:
    """The local file of the artifact with this sha256 (downloaded to a cache if remote)."""
    store = ArtifactStore(settings.resolved_artifact_url)
    missing = IntakeError(
        "artifact_missing", "The uploaded file is missing from the artifact store; upload it again."
    )
    local = store.local_path(sha256)
    if local is not None:
        if not local.is_file():
            raise missing
        return local
    cache = settings.data_dir.resolve() / "cache" / "artifacts"
    target = cache / sha256
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"{sha256}.{uuid.uuid4().hex}.partial"
    digest = hashlib.sha256()
    try:
        with store.open(sha256) as source, partial.open("wb") as sink:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                sink.write(chunk)
    except FileNotFoundError:
        partial.unlink(missing_ok=True)
        raise missing from None
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise IntakeError(
            "artifact_corrupt",
            "The stored file does not match its sha256 any more; upload it again.",
        )
    partial.replace(target)
    return target
