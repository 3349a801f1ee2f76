"""Read-only queries the dashboard needs beyond the API's use cases: job search (the same
keyset pages as ``jobs.list_jobs``, plus a text filter), the key's uploaded models and
datasets, and the progress of several jobs at once (the list page polls it). Every query is
scoped to the signed-in key."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, func, or_, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from client.schemas import DatasetOut, JobPage, ModelOut
from service import jobs
from service.keys import Principal
from service.lifecycle import JobStatus
from service.models import DatasetArtifact, Job, ModelArtifact, UTCDateTime
from service.uploads import dataset_out, model_out

MAX_IDS = 200


def search_jobs(
    sessions: sessionmaker[Session],
    owner: Principal,
    *,
    status: JobStatus | None,
    text: str | None,
    cursor: str | None,
    limit: int,
) -> JobPage:
    """``jobs.list_jobs`` with a case-insensitive text filter on id, label and data reference.
    Without text it is exactly ``jobs.list_jobs``."""
    text = (text or "").strip()
    if not text:
        return jobs.list_jobs(sessions, owner, status=status, cursor=cursor, limit=limit)
    limit = max(1, min(limit, jobs.MAX_PAGE))
    needle = text.lower()
    query = select(Job).where(
        Job.owner_id == owner.id,
        or_(
            Job.id.startswith(needle, autoescape=True),
            func.lower(Job.spec["label"].as_string()).contains(needle, autoescape=True),
            func.lower(Job.spec["data"].as_string()).contains(needle, autoescape=True),
        ),
    )
    if status is not None:
        query = query.where(Job.status == status)
    if cursor is not None:
        at, job_id = jobs._decode_cursor(cursor)
        query = query.where(
            tuple_(Job.created_at, Job.id)
            < tuple_(bindparam("c_at", at, type_=UTCDateTime()), bindparam("c_id", job_id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    with sessions() as session:
        rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return JobPage(
        items=[jobs.job_out(j) for j in rows],
        next_cursor=jobs._encode_cursor(rows[-1]) if more and rows else None,
    )


def models_by_id(
    sessions: sessionmaker[Session], owner: Principal, ids: set[str]
) -> dict[str, ModelOut]:
    if not ids:
        return {}
    with sessions() as session:
        rows = session.scalars(
            select(ModelArtifact).where(
                ModelArtifact.owner_id == owner.id, ModelArtifact.id.in_(sorted(ids))
            )
        )
        return {row.id: model_out(row) for row in rows}


def recent_models(
    sessions: sessionmaker[Session], owner: Principal, limit: int = 50
) -> list[ModelOut]:
    with sessions() as session:
        rows = session.scalars(
            select(ModelArtifact)
            .where(ModelArtifact.owner_id == owner.id)
            .order_by(ModelArtifact.created_at.desc(), ModelArtifact.id.desc())
            .limit(limit)
        )
        return [model_out(row) for row in rows]


def recent_datasets(
    sessions: sessionmaker[Session], owner: Principal, limit: int = 50
) -> list[DatasetOut]:
    with sessions() as session:
        rows = session.scalars(
            select(DatasetArtifact)
            .where(DatasetArtifact.owner_id == owner.id)
            .order_by(DatasetArtifact.created_at.desc(), DatasetArtifact.id.desc())
            .limit(limit)
        )
        return [dataset_out(row) for row in rows]


@dataclass(frozen=True)
class ProgressRow:
    id: str
    status: str
    done: int
    total: int
    phase: str | None
    cancel_requested: bool


def progress_of(
    sessions: sessionmaker[Session], owner: Principal, ids: list[str]
) -> list[ProgressRow]:
    """Status and progress of the listed jobs of ``owner`` (others' ids are left out)."""
    wanted = sorted(set(ids))[:MAX_IDS]
    if not wanted:
        return []
    with sessions() as session:
        rows = session.execute(
            select(
                Job.id, Job.status, Job.progress_done, Job.progress_total, Job.progress_phase,
                Job.cancel_requested,
            ).where(Job.owner_id == owner.id, Job.id.in_(wanted))
        ).all()  # fmt: skip
    return [ProgressRow(*row) for row in rows]
