"""Factories for worker tests: a stored MLP checkpoint, a child process's environment, a job
row read back. Databases, settings and job rows come from tests/support.

The checkpoint is written through the intake's ``save_checkpoint`` into the content-addressed
artifact store (``lrprobe.service.artifacts``).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service.artifacts import ArtifactStore
from lrprobe.service.models import Job
from lrprobe.service.settings import Settings
from lrprobe.worker.intake.checkpoints.architectures.mlp import MLP, MLPConfig
from lrprobe.worker.intake.checkpoints.loading import save_checkpoint
from tests.support.jobs import IRIS_MLP


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


def store_checkpoint(settings: Settings, tmp: Path, config: dict[str, Any] = IRIS_MLP) -> str:
    """Save a seeded MLP into the artifact store; returns its sha256."""
    torch.manual_seed(0)
    source = tmp / f"mlp-{uuid.uuid4().hex[:6]}.safetensors"
    save_checkpoint(MLP(MLPConfig(**config)), source, "mlp", config)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    ArtifactStore(settings.resolved_artifact_url).put(source, sha)
    return sha


def job_row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        return session.get_one(Job, job_id)
