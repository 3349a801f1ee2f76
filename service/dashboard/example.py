"""A finished example on first start: ``lrprobe serve`` calls :func:`ensure_example_job` once the
worker runs, so that a new user who signs in with the printed admin key finds a probe of a small
MLP on scikit-learn's digits, with its charts, instead of an empty page.

The checkpoint is written here without torch (a safetensors file is a JSON header plus raw
little-endian floats), then uploaded and submitted through the same use cases as the API; the
worker runs it like any other job.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import struct
from pathlib import Path
from typing import Any

from sqlalchemy import select

from lrprobe.client.schemas import BudgetSpec, JobCreate
from lrprobe.service import jobs, uploads
from lrprobe.service.artifacts import ArtifactStore
from lrprobe.service.db import make_engine, make_sessionmaker
from lrprobe.service.keys import Principal
from lrprobe.service.models import ApiKey, Job
from lrprobe.service.queue import JobQueue
from lrprobe.service.settings import Settings
from lrprobe.service.upload_stream import ReceivedFile

EXAMPLE_ARCH: dict[str, Any] = {"sizes": [64, 32, 16, 10], "activation": "tanh"}
EXAMPLE_LABEL = "Example: MLP 64-32-16-10 on digits"


def example_checkpoint(path: Path, seed: int = 0) -> None:
    """An MLP in torch's default initialisation, as a safetensors file with lrprobe metadata."""
    rng = random.Random(seed)
    tensors: list[tuple[str, list[int], list[float]]] = []
    sizes = EXAMPLE_ARCH["sizes"]
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        bound = 1.0 / math.sqrt(n_in)
        weight = [rng.uniform(-bound, bound) for _ in range(n_in * n_out)]
        bias = [rng.uniform(-bound, bound) for _ in range(n_out)]
        tensors += [
            (f"layers.{i}.weight", [n_out, n_in], weight),
            (f"layers.{i}.bias", [n_out], bias),
        ]
    header: dict[str, object] = {
        "__metadata__": {"lrprobe.arch": "mlp", "lrprobe.arch_config": json.dumps(EXAMPLE_ARCH)}
    }
    blobs, offset = [], 0
    for name, shape, values in tensors:
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {
            "dtype": "F32",
            "shape": shape,
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def ensure_example_job(settings: Settings, queue: JobQueue | None = None) -> str | None:
    """Submit the example job for the oldest live admin key if the database has no job yet;
    returns its id, or None when there was nothing to do."""
    engine = make_engine(settings.resolved_database_url)
    own_queue = None
    try:
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            if session.scalar(select(Job.id).limit(1)) is not None:
                return None
            admin = session.scalar(
                select(ApiKey.id)
                .where(ApiKey.admin.is_(True), ApiKey.revoked_at.is_(None))
                .order_by(ApiKey.created_at)
                .limit(1)
            )
        if admin is None:
            return None
        owner = Principal(id=admin, admin=True)
        tmp = Path(settings.data_dir).resolve() / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / "example-digits-mlp.safetensors"
        example_checkpoint(path)
        received = ReceivedFile(
            path=path,
            filename="example-digits-mlp.safetensors",
            size=path.stat().st_size,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        store = ArtifactStore(settings.resolved_artifact_url)
        model = uploads.register_model(
            sessions, store, owner, received, arch=None, arch_config=None, allow_pt2=False
        )
        path.unlink(missing_ok=True)
        if queue is None:
            from lrprobe.service.queue import CeleryQueue

            own_queue = queue = CeleryQueue(settings)
        request = JobCreate(
            model_id=model.id,
            data="builtin://digits",
            loss="cross_entropy",
            optimizer="adam",
            budget=BudgetSpec(batch_size=64),  # the default 40 steps: real intervals
            device="cpu",
            label=EXAMPLE_LABEL,
        )
        return jobs.submit_job(sessions, queue, settings, owner, request).job.id
    finally:
        if own_queue is not None:
            own_queue.close()
        engine.dispose()
