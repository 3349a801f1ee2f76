"""Job use cases: submit (idempotent), list (cursor pages), read, cancel, results and events.

Each function is one transaction; a new job is sent to the queue only after its row is
committed, and a failed send is left to the reaper, which re-sends jobs queued for too long.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from pydantic_core import to_json
from sqlalchemy import Row, Select, Table, and_, bindparam, func, insert, or_, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.client.schemas import (
    JobCreate,
    JobError,
    JobEvent,
    JobEventList,
    JobOut,
    JobPage,
    JobProgress,
)
from lrprobe.client.schemas import Recommendation as RecommendationOut
from lrprobe.service import lifecycle
from lrprobe.service.broker import job_time_limit
from lrprobe.service.data_refs import check_data_ref
from lrprobe.service.errors import (
    IdempotencyConflictError,
    InvalidCursorError,
    JobFinishedError,
    JobNotFinishedError,
    JobNotFoundError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from lrprobe.service.keys import Principal
from lrprobe.service.lifecycle import FINAL, JobStatus
from lrprobe.service.models import (
    DatasetArtifact,
    Job,
    ModelArtifact,
    Recommendation,
    UTCDateTime,
    utcnow,
)
from lrprobe.service.models import JobEvent as JobEventRow
from lrprobe.service.queue import JobQueue
from lrprobe.service.settings import Settings

log = logging.getLogger(__name__)

MAX_PAGE = 200
MAX_EVENTS = 500


class Submitted:
    """A submission's job, as JobOut's JSON (what the API sends) and, when asked, as a JobOut."""

    def __init__(self, job: dict[str, Any], *, created: bool) -> None:
        self.data = job  # JobOut's shape (see _job_dict)
        self.created = created  # False: an Idempotency-Key replay of an earlier request

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @functools.cached_property
    def job(self) -> JobOut:
        return JobOut.model_validate(self.data)

    @functools.cached_property
    def json(self) -> bytes:
        return to_json(self.data)


def job_out(job: Job) -> JobOut:
    error = None
    if job.error_code is not None:
        error = JobError(code=job.error_code, detail=job.error_detail)
    return JobOut(
        id=job.id,
        status=job.status,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress=JobProgress(
            done=job.progress_done, total=job.progress_total, phase=job.progress_phase
        ),
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        spec=JobCreate.model_validate(job.spec),
        error=error,
        model_id=job.model_id,
        label=job.spec.get("label"),
        run=job.run,
        run_step=job.spec.get("run_step"),
    )


def _request_hash(spec: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def submit_job(
    sessions: sessionmaker[Session],
    queue: JobQueue,
    settings: Settings,
    owner: Principal,
    request: JobCreate,
    idempotency_key: str | None = None,
) -> Submitted:
    spec = request.model_dump(mode="json")
    digest = _request_hash(spec)
    if idempotency_key is not None:
        replay = _replay(sessions, owner, idempotency_key, digest)
        if replay is not None:
            return Submitted(replay, created=False)
    if not queue.ping():
        # A job accepted now might never run (a corrupt broker file never recovers); a
        # passing blip is still covered by the reaper, which re-sends unsent jobs.
        raise ServiceUnavailableError(
            "The job queue does not work right now, so the job was not created; retry in a "
            "minute, and if it persists ask the operator to check GET /readyz.",
            code="broker_unavailable",
            headers={"Retry-After": "30"},
        )
    try:
        with sessions.begin() as session:
            params = {"model_id": request.model_id, "owner_id": owner.id}
            if session.execute(_OWNED_MODEL, params).first() is None:
                raise ModelNotFoundError(
                    f"There is no model {request.model_id!r}; upload the checkpoint with "
                    "POST /v1/models and use the id it returns."
                )
            check_data_ref(request.data, settings, lambda d: _owns_dataset(session, owner, d))
            now = utcnow()
            job_id = lifecycle.new_id()
            row = session.execute(
                _INSERT_JOB,
                {
                    "id": job_id, "owner_id": owner.id, "model_id": request.model_id,
                    "status": JobStatus.QUEUED.value, "spec": spec,
                    "idempotency_key": idempotency_key,
                    "request_hash": digest if idempotency_key is not None else None,
                    "created_at": now, "queued_at": now, "run": request.run,
                },
            ).one()  # fmt: skip
            # The job's first event, written as lifecycle.record writes it but without its
            # notification: no stream can watch a job before this request returns its id, and
            # a stream reads the database once it watches.
            session.execute(
                _INSERT_EVENT,
                {"job_id": job_id, "at": now, "kind": "status", "data": {"status": "queued"}},
            )
            out = _job_dict(row)
    except IntegrityError:
        # Another request with the same Idempotency-Key committed first.
        if idempotency_key is None:
            raise
        replay = _replay(sessions, owner, idempotency_key, digest)
        if replay is None:
            raise
        return Submitted(replay, created=False)
    try:
        queue.send(job_id, job_time_limit(spec, settings))
    except Exception:
        log.warning("could not send job %s to the broker; the reaper will re-send it", job_id,
                    exc_info=True)  # fmt: skip
    return Submitted(out, created=True)


def _owns_dataset(session: Session, owner: Principal, dataset_id: str) -> bool:
    found = session.scalar(
        select(DatasetArtifact.id).where(
            DatasetArtifact.id == dataset_id, DatasetArtifact.owner_id == owner.id
        )
    )
    return found is not None


def _replay(
    sessions: sessionmaker[Session], owner: Principal, key: str, digest: str
) -> dict[str, Any] | None:
    with sessions() as session:
        row = session.execute(_BY_IDEMPOTENCY_KEY, {"owner_id": owner.id, "key": key}).first()
    if row is None:
        return None
    if row.request_hash != digest:
        raise IdempotencyConflictError(
            f"The Idempotency-Key {key!r} was used for a different request (job {row.id}); "
            "use a new key for a new job, or resend the original body."
        )
    return _job_dict(row)


def _owned_job(session: Session, owner: Principal, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.owner_id == owner.id))
    if job is None:
        raise JobNotFoundError(f"There is no job {job_id!r}; list your jobs with GET /v1/jobs.")
    return job


def get_job(sessions: sessionmaker[Session], owner: Principal, job_id: str) -> JobOut:
    with sessions() as session:
        return job_out(_owned_job(session, owner, job_id))


# --- the read path of the API: rows straight to JSON ----------------------------------------
#
# GET /v1/jobs/{id} and GET /v1/jobs are the API's busiest routes. Building a JobOut per row and
# letting FastAPI validate it again took most of a list page's time, for data that was validated
# when it was submitted. These functions select the columns JobOut needs and serialise plain
# dicts of JobOut's shape with pydantic-core's own encoder (the same JSON as
# ``JobOut.model_dump_json``; tests/service/test_job_reads.py checks it on every status).

_JOB_COLUMNS = (
    Job.id, Job.status, Job.created_at, Job.started_at, Job.finished_at, Job.progress_done,
    Job.progress_total, Job.progress_phase, Job.attempts, Job.cancel_requested, Job.spec,
    Job.error_code, Job.error_detail, Job.model_id, Job.run,
)  # fmt: skip

# Statements built once, with bound parameters: building a select and its cache key on each
# request cost more CPU than running it (0.9 against 0.4 ms per GET of a job, measured).
_GET_JOB = select(*_JOB_COLUMNS).where(
    Job.id == bindparam("job_id"), Job.owner_id == bindparam("owner_id")
)

# A submission's statements, built once on the tables (Core): through the ORM's unit of work
# they took half of a submission's CPU time. The insert returns the row JobOut is made of.
_JOBS: Table = Job.__table__  # type: ignore[assignment]  # a declarative model's Table
_OWNED_MODEL = select(ModelArtifact.__table__.c.id).where(
    ModelArtifact.__table__.c.id == bindparam("model_id"),
    ModelArtifact.__table__.c.owner_id == bindparam("owner_id"),
)
_INSERT_JOB = insert(_JOBS).returning(*(_JOBS.c[c.key] for c in _JOB_COLUMNS))
_INSERT_EVENT = insert(cast(Table, JobEventRow.__table__))
_BY_IDEMPOTENCY_KEY = select(*_JOB_COLUMNS, Job.request_hash).where(
    Job.owner_id == bindparam("owner_id"), Job.idempotency_key == bindparam("key")
)

# Fields of JobCreate with a default, as JSON: a spec stored before a field was added gets its
# default, as validating it would give.
_SPEC_DEFAULTS: dict[str, Any] = {
    name: value
    for name, value in JobCreate.model_validate(
        {"model_id": "-", "data": "builtin://digits", "loss": "cross_entropy"}
    )
    .model_dump(mode="json")
    .items()
    if not JobCreate.model_fields[name].is_required()
}


def _job_dict(row: Row[Any]) -> dict[str, Any]:
    """A JobOut, as the dict its JSON encodes."""
    spec = row.spec
    error = None
    if row.error_code is not None:
        error = {"code": row.error_code, "detail": row.error_detail}
    return {
        "id": row.id,
        "status": row.status,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "progress": {
            "done": row.progress_done, "total": row.progress_total, "phase": row.progress_phase
        },
        "attempts": row.attempts,
        "cancel_requested": row.cancel_requested,
        "spec": {**_SPEC_DEFAULTS, **spec},
        "error": error,
        "model_id": row.model_id,
        "label": spec.get("label"),
        "run": row.run,
        "run_step": spec.get("run_step"),
    }  # fmt: skip


def job_query(owner: Principal, job_id: str) -> tuple[Select[Any], dict[str, Any]]:
    """The statement that reads one of ``owner``'s jobs for :func:`job_json`, and its
    parameters (also run by :mod:`lrprobe.service.job_reads` on PostgreSQL)."""
    return _GET_JOB, {"job_id": job_id, "owner_id": owner.id}


def job_json(rows: Sequence[Any], job_id: str) -> bytes:
    """JobOut's JSON from the rows of :func:`job_query`."""
    if not rows:
        raise JobNotFoundError(f"There is no job {job_id!r}; list your jobs with GET /v1/jobs.")
    return to_json(_job_dict(rows[0]))


def get_job_json(sessions: sessionmaker[Session], owner: Principal, job_id: str) -> bytes:
    """:func:`get_job`, as JobOut's JSON."""
    query, params = job_query(owner, job_id)
    with sessions() as session:
        rows = session.execute(query, params).all()
    return job_json(rows, job_id)


def _encode_cursor(created_at: datetime, job_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        at = datetime.fromisoformat(created)
        if at.tzinfo is None or not isinstance(job_id, str):
            raise ValueError
        return at, job_id
    except (ValueError, TypeError, binascii.Error):
        raise InvalidCursorError(
            "The cursor is not one this server gave out; pass next_cursor from the previous "
            "page unchanged, or leave it out for the first page."
        ) from None


def page_query(
    owner: Principal,
    status: JobStatus | None,
    text: str | None,
    run: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[Select[Any], dict[str, Any]]:
    """Newest first; pages follow (created_at, id), a keyset the owner/status indexes serve
    (no OFFSET, so a deep page costs what the first one does). ``text`` keeps jobs whose id
    starts with it or whose label or data reference contains it (case-insensitive; the
    dashboard's search). Returns the statement and its parameters."""
    params: dict[str, Any] = {"owner_id": owner.id}
    if status is not None:
        params["status"] = status.value
    if run is not None:
        params["run"] = run
    if cursor is not None:
        params["c_at"], params["c_id"] = _decode_cursor(cursor)
    query = _page_statement(status is not None, run is not None, cursor is not None, limit)
    needle = (text or "").strip().lower()
    if needle:
        # autoescape needs the literal text, so a search builds its own statement
        query = query.where(
            or_(
                Job.id.startswith(needle, autoescape=True),
                func.lower(Job.spec["label"].as_string()).contains(needle, autoescape=True),
                func.lower(Job.spec["data"].as_string()).contains(needle, autoescape=True),
            )
        )
    return query, params


@functools.lru_cache(maxsize=4 * MAX_PAGE)
def _page_statement(
    with_status: bool, with_run: bool, with_cursor: bool, limit: int
) -> Select[Any]:
    query = select(*_JOB_COLUMNS).where(Job.owner_id == bindparam("owner_id"))
    if with_status:
        query = query.where(Job.status == bindparam("status"))
    if with_run:
        query = query.where(Job.run == bindparam("run"))
    if with_cursor:
        query = query.where(
            tuple_(Job.created_at, Job.id)
            < tuple_(bindparam("c_at", type_=UTCDateTime()), bindparam("c_id"))
        )
    return query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)


def _page_rows(
    sessions: sessionmaker[Session],
    owner: Principal,
    status: JobStatus | None,
    text: str | None,
    run: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    limit = max(1, min(limit, MAX_PAGE))
    query, params = page_query(owner, status, text, run, cursor, limit)
    with sessions() as session:
        rows = session.execute(query, params).all()
    return page_items(rows, limit)


def page_items(rows: Sequence[Any], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """A page's items (JobOut's shape) and next cursor, from the rows of :func:`page_query`
    (which reads one row more than ``limit``, to know whether there is a next page)."""
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return [_job_dict(r) for r in rows], next_cursor


def list_jobs(
    sessions: sessionmaker[Session],
    owner: Principal,
    *,
    status: JobStatus | None = None,
    text: str | None = None,
    run: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> JobPage:
    """This key's jobs, newest first, in pages of at most ``limit`` (see :func:`page_query`)."""
    items, next_cursor = _page_rows(sessions, owner, status, text, run, cursor, limit)
    return JobPage.model_validate({"items": items, "next_cursor": next_cursor})


def list_jobs_json(
    sessions: sessionmaker[Session],
    owner: Principal,
    *,
    status: JobStatus | None = None,
    text: str | None = None,
    run: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> bytes:
    """:func:`list_jobs`, as JobPage's JSON."""
    items, next_cursor = _page_rows(sessions, owner, status, text, run, cursor, limit)
    return to_json({"items": items, "next_cursor": next_cursor})


def cancel_job(sessions: sessionmaker[Session], owner: Principal, job_id: str) -> JobOut:
    """Cancel a queued job at once; ask a running one to stop (it stops at its next batch).
    Cancelling a cancelled job is a no-op; a succeeded or failed job cannot be cancelled."""
    get_job(sessions, owner, job_id)  # ownership
    after = lifecycle.request_cancel(sessions, job_id)
    if after in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise JobFinishedError(f"Job {job_id} already {after}; there is nothing to cancel.")
    return get_job(sessions, owner, job_id)


def get_recommendation(
    sessions: sessionmaker[Session], owner: Principal, job_id: str
) -> RecommendationOut:
    with sessions() as session:
        job = _owned_job(session, owner, job_id)
        if job.status != JobStatus.SUCCEEDED:
            hint = (
                f"it failed ({job.error_code})"
                if job.status == JobStatus.FAILED
                else f"it is {job.status}"
            )
            raise JobNotFinishedError(
                f"Job {job_id} has no recommendation: {hint}; a recommendation exists once the "
                "job has succeeded (follow GET /v1/jobs/{id}/events)."
            )
        row = session.get_one(Recommendation, job_id)
        return RecommendationOut.model_validate(
            {**row.data, "method_version": row.data.get("method_version", row.method_version)}
        )


# Event fields kept in the database for operators (which worker host and PID ran a job) but
# never shown to users: they map the deployment.
OPERATOR_ONLY_EVENT_FIELDS = frozenset({"worker"})


def list_events(
    sessions: sessionmaker[Session], owner: Principal, job_id: str, after: int = 0,
    limit: int = MAX_EVENTS,
) -> JobEventList:  # fmt: skip
    """Events with id > ``after``, oldest first; ``final`` once the job is final and every
    event has been returned."""
    with sessions() as session:
        job = _owned_job(session, owner, job_id)
        status = JobStatus(job.status)  # read before the events: no event can be missed
        rows = session.scalars(
            select(JobEventRow)
            .where(and_(JobEventRow.job_id == job_id, JobEventRow.id > after))
            .order_by(JobEventRow.id)
            .limit(limit + 1)
        ).all()
    complete = len(rows) <= limit
    items = [
        JobEvent(
            id=r.id,
            job_id=r.job_id,
            at=r.at,
            kind=r.kind,
            data={k: v for k, v in r.data.items() if k not in OPERATOR_ONLY_EVENT_FIELDS},
        )
        for r in rows[:limit]
    ]
    return JobEventList(items=items, status=status.value, final=status in FINAL and complete)
