"""Each API operation as data: method, path, body, whether it may be sent twice, and how to read
the answer. :class:`~client.Client` and :class:`~client.AsyncClient` only send these."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from lrprobe.client._errors import ValidationFailed
from lrprobe.client.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    BudgetSpec,
    DatasetOut,
    FieldError,
    Health,
    JobCreate,
    JobEventList,
    JobOut,
    JobPage,
    JobStatusName,
    ModelOut,
    OptimizerSpec,
    PartitionSpec,
    Problem,
)
from lrprobe.client.schemas import Recommendation as RecommendationData

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Upload:
    """A file (or a Hugging Face model folder, sent as a zip archive) and its form fields."""

    path: Path
    fields: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def open(self) -> Iterator[dict[str, tuple[str, IO[bytes], str]]]:
        if self.path.is_dir():
            with tempfile.TemporaryFile() as archive:
                _zip_folder(self.path, archive)
                archive.seek(0)
                yield {"file": (f"{self.path.name}.zip", archive, "application/zip")}
        else:
            with self.path.open("rb") as handle:
                yield {"file": (self.path.name, handle, "application/octet-stream")}


def _zip_folder(folder: Path, target: IO[bytes]) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zf:
        for item in sorted(folder.rglob("*")):
            if item.is_file():
                zf.write(item, f"{folder.name}/{item.relative_to(folder).as_posix()}")


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    idempotent: bool
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    upload: Upload | None = None


def _model(cls: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: cls.model_validate_json(response.content)


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def _existing_file(path: PathLike, what: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    return resolved


# --- uploads (never resent once they reached the server) -------------------------------------


def upload_model(
    path: PathLike, arch: str | None = None, arch_config: Mapping[str, Any] | None = None
) -> Call[ModelOut]:
    fields = {}
    if arch is not None:
        fields["arch"] = arch
    if arch_config is not None:
        fields["arch_config"] = json.dumps(dict(arch_config))
    upload = Upload(_existing_file(path, "the checkpoint"), fields)
    return Call("POST", "/v1/models", _model(ModelOut), idempotent=False, upload=upload)


def upload_dataset(path: PathLike) -> Call[DatasetOut]:
    upload = Upload(_existing_file(path, "the dataset"))
    return Call("POST", "/v1/datasets", _model(DatasetOut), idempotent=False, upload=upload)


def get_model(model_id: str) -> Call[ModelOut]:
    return Call("GET", f"/v1/models/{_segment(model_id)}", _model(ModelOut), idempotent=True)


def get_dataset(dataset_id: str) -> Call[DatasetOut]:
    path = f"/v1/datasets/{_segment(dataset_id)}"
    return Call("GET", path, _model(DatasetOut), idempotent=True)


# --- jobs ------------------------------------------------------------------------------------


def job_spec(
    *,
    model: str | ModelOut,
    data: str | DatasetOut,
    loss: str,
    optimizer: str | Mapping[str, Any] | OptimizerSpec,
    partition: str | Mapping[str, Any] | PartitionSpec,
    budget: Mapping[str, Any] | BudgetSpec | None,
    seed: int,
    **extra: Any,
) -> JobCreate:
    """The request body, validated here so that a bad argument fails before anything is sent,
    with the same exception the service would raise."""
    body = {
        "model_id": model.id if isinstance(model, ModelOut) else model,
        "data": data.uri if isinstance(data, DatasetOut) else data,
        "loss": loss,
        "optimizer": optimizer,
        "partition": partition,
        "seed": seed,
        **({} if budget is None else {"budget": budget}),
        **{k: v for k, v in extra.items() if v is not None},
    }
    try:
        return JobCreate.model_validate(body)
    except ValidationError as exc:
        errors = [
            FieldError(loc=["body", *e["loc"]], msg=e["msg"], type=e["type"]) for e in exc.errors()
        ]
        first = errors[0]
        where = ".".join(str(p) for p in first.loc[1:]) or "request"
        message = f"The job spec is invalid: {where}: {first.msg}"
        problem = Problem(title="Invalid job spec", status=422, code="validation_error",
                          detail=message, errors=errors)  # fmt: skip
        raise ValidationFailed(message, code="validation_error", problem=problem) from None


def submit(spec: JobCreate, idempotency_key: str | None = None) -> Call[JobOut]:
    # One key per submit() call, the same on every retry: a retried POST returns the first job.
    key = idempotency_key or uuid.uuid4().hex
    return Call(
        "POST",
        "/v1/jobs",
        _model(JobOut),
        idempotent=True,
        json=spec.model_dump(mode="json"),
        headers={"Idempotency-Key": key},
    )


def get_job(job_id: str) -> Call[JobOut]:
    return Call("GET", f"/v1/jobs/{_segment(job_id)}", _model(JobOut), idempotent=True)


def list_jobs(
    status: JobStatusName | None, cursor: str | None, limit: int, run: str | None = None
) -> Call[JobPage]:
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        params["status"] = status
    if run is not None:
        params["run"] = run
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/v1/jobs", _model(JobPage), idempotent=True, params=params)


def cancel(job_id: str) -> Call[JobOut]:
    path = f"/v1/jobs/{_segment(job_id)}/cancel"
    return Call("POST", path, _model(JobOut), idempotent=False)


def recommendation(job_id: str) -> Call[RecommendationData]:
    path = f"/v1/jobs/{_segment(job_id)}/recommendation"
    return Call("GET", path, _model(RecommendationData), idempotent=True)


def events_path(job_id: str) -> str:
    return f"/v1/jobs/{_segment(job_id)}/events"


def events(job_id: str, after: int) -> Call[JobEventList]:
    params = {"after": after}
    return Call("GET", events_path(job_id), _model(JobEventList), idempotent=True, params=params)


# --- keys (admin) and health -----------------------------------------------------------------

_KEY_LIST = TypeAdapter(list[ApiKeyOut])


def create_key(name: str, admin: bool) -> Call[ApiKeyCreated]:
    body = ApiKeyCreate(name=name, admin=admin).model_dump(mode="json")
    return Call("POST", "/v1/keys", _model(ApiKeyCreated), idempotent=False, json=body)


def list_keys() -> Call[list[ApiKeyOut]]:
    return Call("GET", "/v1/keys", lambda r: _KEY_LIST.validate_json(r.content), idempotent=True)


def revoke_key(key_id: str) -> Call[ApiKeyOut]:
    return Call("DELETE", f"/v1/keys/{_segment(key_id)}", _model(ApiKeyOut), idempotent=False)


def health() -> Call[Health]:
    return Call("GET", "/healthz", _model(Health), idempotent=True)
