"""Use cases for uploaded checkpoints and datasets: inspect, store content-addressed, record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.client.schemas import DatasetOut, ModelOut
from lrprobe.rules.checkpoint_inspection import MAX_ARCH_CONFIG_BYTES
from lrprobe.rules.json_limits import MAX_DEPTH, JsonLimitError, load_bounded
from lrprobe.service.artifacts import ArtifactStore
from lrprobe.service.errors import DatasetNotFoundError, ModelNotFoundError, UnprocessableError
from lrprobe.service.keys import Principal
from lrprobe.service.lifecycle import new_id
from lrprobe.service.models import DatasetArtifact, ModelArtifact, utcnow
from lrprobe.service.upload_formats import inspect_checkpoint, inspect_dataset
from lrprobe.service.upload_stream import ReceivedFile


def parse_arch_config(raw: str | None) -> dict[str, Any] | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = load_bounded(raw, max_bytes=MAX_ARCH_CONFIG_BYTES)
    except JsonLimitError:
        value = None
    if not isinstance(value, dict):
        raise UnprocessableError(
            'The form field arch_config must be a JSON object, e.g. {"hidden": [64, 64]}, of '
            f"at most {MAX_ARCH_CONFIG_BYTES} bytes and {MAX_DEPTH} levels, with finite numbers.",
            code="invalid_arch_config",
            errors=[{"loc": ["body", "arch_config"], "msg": "not a JSON object", "type": "json"}],
        )
    return value


Out = TypeVar("Out")


def _store_and_record(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    upload: ReceivedFile,
    row: ModelArtifact | DatasetArtifact,
    out: Callable[[Any], Out],
) -> Out:
    """Store the file, then its row. If the row cannot be written, a file this call added is
    removed again (unless another row took it meanwhile), so a refused upload leaves nothing."""
    existed = store.exists(upload.sha256)
    store.put(upload.path, upload.sha256)
    try:
        with sessions.begin() as session:
            session.add(row)
            session.flush()
            return out(row)
    except Exception:
        if not existed:
            _forget_unreferenced(sessions, store, upload.sha256)
        raise


def _forget_unreferenced(
    sessions: sessionmaker[Session], store: ArtifactStore, sha256: str
) -> None:
    try:
        with sessions() as session:
            used = any(
                session.scalar(select(table.id).where(table.sha256 == sha256).limit(1))
                for table in (ModelArtifact, DatasetArtifact)
            )
    except Exception:  # the database is unreachable: keep the file rather than guess
        return
    if not used:
        store.delete(sha256)


def model_out(row: ModelArtifact) -> ModelOut:
    return ModelOut.model_validate(row, from_attributes=True)


def dataset_out(row: DatasetArtifact) -> DatasetOut:
    return DatasetOut(
        id=row.id,
        sha256=row.sha256,
        filename=row.filename,
        size_bytes=row.size_bytes,
        format=row.format,
        created_at=row.created_at,
        uri=f"upload://{row.id}",
    )


def register_model(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    owner: Principal,
    upload: ReceivedFile,
    *,
    arch: str | None,
    arch_config: str | None,
    allow_pt2: bool,
) -> ModelOut:
    """Inspect the uploaded checkpoint; refused files leave nothing behind."""
    info = inspect_checkpoint(
        upload.path,
        arch=(arch or "").strip() or None,
        arch_config=parse_arch_config(arch_config),
        allow_pt2=allow_pt2,
    )
    row = ModelArtifact(
        id=new_id(),
        owner_id=owner.id,
        sha256=upload.sha256,
        filename=upload.filename[:500],
        size_bytes=upload.size,
        format=info.format,
        arch=info.arch,
        arch_config=info.arch_config,
        num_params=info.num_params,
        groups=info.groups,
        created_at=utcnow(),
    )
    return _store_and_record(sessions, store, upload, row, model_out)


def register_dataset(
    sessions: sessionmaker[Session], store: ArtifactStore, owner: Principal, upload: ReceivedFile
) -> DatasetOut:
    info = inspect_dataset(upload.path, upload.filename)
    row = DatasetArtifact(
        id=new_id(),
        owner_id=owner.id,
        sha256=upload.sha256,
        filename=upload.filename[:500],
        size_bytes=upload.size,
        format=info.format,
        created_at=utcnow(),
    )
    return _store_and_record(sessions, store, upload, row, dataset_out)


def get_model(sessions: sessionmaker[Session], owner: Principal, model_id: str) -> ModelOut:
    with sessions() as session:
        row = session.scalar(
            select(ModelArtifact).where(
                ModelArtifact.id == model_id, ModelArtifact.owner_id == owner.id
            )
        )
        if row is None:
            raise ModelNotFoundError(
                f"There is no model {model_id!r}; upload one with POST /v1/models."
            )
        return model_out(row)


def get_dataset(sessions: sessionmaker[Session], owner: Principal, dataset_id: str) -> DatasetOut:
    with sessions() as session:
        row = session.scalar(
            select(DatasetArtifact).where(
                DatasetArtifact.id == dataset_id, DatasetArtifact.owner_id == owner.id
            )
        )
        if row is None:
            raise DatasetNotFoundError(
                f"There is no dataset {dataset_id!r}; upload one with POST /v1/datasets."
            )
        return dataset_out(row)
