"""The one job factory: a job row as the API would store it after validating the request (its
owner key and model included), created directly with the ORM."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service import lifecycle
from lrprobe.service.models import ApiKey, Job, ModelArtifact

IRIS_MLP = {"sizes": [4, 16, 3], "activation": "tanh"}


def make_job(
    sessions: sessionmaker[Session],
    sha256: str = "0" * 64,
    *,
    data: str = "builtin://iris",
    budget: dict[str, Any] | None = None,
    config: dict[str, Any] = IRIS_MLP,
    columns: Mapping[str, Any] | None = None,
    **spec: Any,
) -> str:
    """A queued job for the MLP checkpoint ``sha256`` (``config``) on ``data``; ``budget`` and
    ``spec`` override the job spec's fields, ``columns`` the row's (e.g. ``attempts``)."""
    with sessions.begin() as session:
        owner = ApiKey(
            id=lifecycle.new_id(), name="k", prefix="lrp_t", secret_hash=lifecycle.new_id()
        )
        model = ModelArtifact(
            id=lifecycle.new_id(), owner_id=owner.id, sha256=sha256, filename="m.safetensors",
            size_bytes=1, format="safetensors", arch="mlp", arch_config=config,
        )  # fmt: skip
        body = {
            "model_id": model.id,
            "data": data,
            "loss": "cross_entropy",
            "budget": {"batches": 8, "batch_size": 32, "heldout_batches": 2} | (budget or {}),
            "device": "cpu",
        } | spec
        job = Job(
            id=lifecycle.new_id(), owner_id=owner.id, model_id=model.id, spec=body,
            **(columns or {}),
        )  # fmt: skip
        session.add_all([owner, model])
        session.flush()
        session.add(job)
        return job.id
