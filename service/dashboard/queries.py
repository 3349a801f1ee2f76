"""Read-only queries the dashboard needs beyond the API's use cases: the key's uploaded models
and datasets, and the progress of several jobs at once (the list page polls it). Every query is
scoped to the signed-in key."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.client.schemas import DatasetOut, ModelOut
from lrprobe.service.keys import Principal
from lrprobe.service.models import DatasetArtifact, Job, ModelArtifact, Recommendation
from lrprobe.service.uploads import dataset_out, model_out

MAX_IDS = 200


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


def run_history(
    sessions: sessionmaker[Session], owner: Principal, run: str, limit: int = 500
) -> list[tuple[int, dict[str, float]]]:
    """The succeeded jobs of training run ``run``: (training step, {group: lr}) in step order.
    A job without ``run_step`` counts by its position in the run."""
    with sessions() as session:
        rows = session.execute(
            select(Job.spec, Recommendation.data)
            .join(Recommendation, Recommendation.job_id == Job.id)
            .where(Job.owner_id == owner.id, Job.run == run, Job.status == "succeeded")
            .order_by(Job.created_at, Job.id)
            .limit(limit)
        ).all()
    points = []
    for position, (spec, data) in enumerate(rows):
        step = spec.get("run_step")
        lrs = {
            g["name"]: float(g["lr"])
            for g in data.get("groups", [])
            if isinstance(g.get("lr"), int | float) and g["lr"] > 0
        }
        points.append((step if isinstance(step, int) else position, lrs))
    return sorted(points, key=lambda p: p[0])
