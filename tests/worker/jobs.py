"""Factories for worker tests: settings on a temp data dir, a stored MLP checkpoint, job rows.

Rows are created directly with the ORM (as the API would after validating a request); the
checkpoint is written through the intake's ``save_checkpoint`` into the content-addressed
artifact store (``lrprobe.service.artifacts``).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import torch
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service import lifecycle
from lrprobe.service.artifacts import ArtifactStore
from lrprobe.service.db import make_engine, make_sessionmaker
from lrprobe.service.models import ApiKey, Base, Job, ModelArtifact
from lrprobe.service.settings import Settings
from lrprobe.worker.intake.checkpoints.architectures.mlp import MLP, MLPConfig
from lrprobe.worker.intake.checkpoints.loading import save_checkpoint

POSTGRES_ADMIN = os.environ.get(
    "LRPROBE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS = os.environ.get("LRPROBE_TEST_REDIS", "redis://127.0.0.1:6379")

IRIS_MLP = {"sizes": [4, 16, 3], "activation": "tanh"}


def settings_for(data_dir: Path, database_url: str | None = None, **overrides: Any) -> Settings:
    return Settings(data_dir=data_dir, database_url=database_url, _env_file=None, **overrides)  # type: ignore[call-arg]


def env_for(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process (worker, reaper) use ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
    env |= {
        "LRPROBE_DATA_DIR": str(settings.data_dir),
        "LRPROBE_DATABASE_URL": settings.resolved_database_url,
        "LRPROBE_BROKER_URL": settings.resolved_broker_url,
        "LRPROBE_LEASE_SECONDS": str(settings.lease_seconds),
        "LRPROBE_REQUEUE_AFTER_SECONDS": str(settings.requeue_after_seconds),
        "LRPROBE_TORCH_THREADS": "1",
        "LRPROBE_QUEUE": settings.queue,
    }
    return env


def create_postgres_database() -> str:
    name = f"lrprobe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}"


def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database(url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def store_checkpoint(settings: Settings, tmp: Path, config: dict[str, Any] = IRIS_MLP) -> str:
    """Save a seeded MLP into the artifact store; returns its sha256."""
    torch.manual_seed(0)
    source = tmp / f"mlp-{uuid.uuid4().hex[:6]}.safetensors"
    save_checkpoint(MLP(MLPConfig(**config)), source, "mlp", config)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    ArtifactStore(settings.resolved_artifact_url).put(source, sha)
    return sha


def make_job(
    sessions: sessionmaker[Session],
    sha256: str,
    *,
    data: str = "builtin://iris",
    budget: dict[str, Any] | None = None,
    config: dict[str, Any] = IRIS_MLP,
    **spec: Any,
) -> str:
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
        job = Job(id=lifecycle.new_id(), owner_id=owner.id, model_id=model.id, spec=body)
        session.add_all([owner, model])
        session.flush()
        session.add(job)
        return job.id


def job_row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        return session.get_one(Job, job_id)
