"""Uploading checkpoints (``/v1/models``) and datasets (``/v1/datasets``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from lrprobe.client.schemas import DatasetOut, ModelOut
from lrprobe.service import uploads
from lrprobe.service.deps import CurrentKey, ServicesDep, SessionsDep
from lrprobe.service.routes import problems
from lrprobe.service.upload_stream import receive_artifact

router = APIRouter(prefix="/v1", tags=["uploads"])


def _multipart_body(extra: dict[str, object]) -> dict[str, object]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            **extra,
                        },
                    }
                }
            },
        }
    }


@router.post(
    "/models",
    status_code=201,
    response_model=ModelOut,
    responses=problems(401, 408, 413, 415, 422, 429),
    openapi_extra=_multipart_body(
        {
            "arch": {"type": "string", "description": "Registry architecture (state dicts)."},
            "arch_config": {"type": "string", "description": "Its config, a JSON object."},
        }
    ),
)
async def upload_model(request: Request, services: ServicesDep, key: CurrentKey) -> ModelOut:
    """Upload a checkpoint: a safetensors state dict (with ``arch``/``arch_config``, or
    ``lrprobe.arch`` metadata), a ``torch.save`` state dict, or a Hugging Face folder archive.
    The format is read from the content; pickled modules and TorchScript are refused."""
    upload = receive_artifact(request, "checkpoint", services.settings, services.upload_dir)
    async with upload as form:
        return await run_in_threadpool(
            lambda: uploads.register_model(
                services.sessions,
                services.store,
                key,
                form.file,
                arch=form.fields.get("arch"),
                arch_config=form.fields.get("arch_config"),
                allow_pt2=services.settings.allow_pt2,
            )
        )


@router.get("/models/{model_id}", response_model=ModelOut, responses=problems(401, 404))
def get_model(model_id: str, sessions: SessionsDep, key: CurrentKey) -> ModelOut:
    """One of this key's models."""
    return uploads.get_model(sessions, key, model_id)


@router.post(
    "/datasets",
    status_code=201,
    response_model=DatasetOut,
    responses=problems(401, 408, 413, 415, 422, 429),
    openapi_extra=_multipart_body({}),
)
async def upload_dataset(request: Request, services: ServicesDep, key: CurrentKey) -> DatasetOut:
    """Upload a dataset (.npz, .pt, .csv, .parquet, .npy, .bin); refer to it in a job as the
    returned ``uri`` (``upload://ID``)."""
    upload = receive_artifact(request, "dataset", services.settings, services.upload_dir)
    async with upload as form:
        return await run_in_threadpool(
            uploads.register_dataset, services.sessions, services.store, key, form.file
        )


@router.get("/datasets/{dataset_id}", response_model=DatasetOut, responses=problems(401, 404))
def get_dataset(dataset_id: str, sessions: SessionsDep, key: CurrentKey) -> DatasetOut:
    """One of this key's datasets."""
    return uploads.get_dataset(sessions, key, dataset_id)
