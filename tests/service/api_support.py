"""Factories for API tests: a running app with keys, a recording queue, checkpoint bytes."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient
from safetensors.numpy import save as save_safetensors
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service import keys
from lrprobe.service.app import create_app
from lrprobe.service.settings import Settings
from tests.support.settings import make_settings

MLP_CONFIG = {"in_features": 4, "hidden": [8], "out_features": 3}
API_UPLOAD_CAP = 1 << 20  # small, so that the tests of the upload limit stay small


@dataclass
class RecordingQueue:
    sent: list[tuple[str, float | None]] = field(default_factory=list)
    up: bool = True
    fail: bool = False

    def send(self, job_id: str, time_limit_s: float | None) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((job_id, time_limit_s))

    def ping(self) -> bool:
        return self.up

    def close(self) -> None:
        pass


@dataclass
class RunningApi:
    client: TestClient
    queue: RecordingQueue
    settings: Settings
    sessions: sessionmaker[Session]
    key_a: str
    key_b: str
    admin: str

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def upload_model(
        self, key: str, content: bytes | None = None, filename: str = "m.safetensors",
        **fields: str,
    ) -> httpx.Response:  # fmt: skip
        content = safetensors_mlp() if content is None else content
        return self.client.post(
            "/v1/models", headers=self.auth(key), files={"file": (filename, content)}, data=fields
        )

    def model_id(self, key: str) -> str:
        response = self.upload_model(key)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def submit(self, key: str, model_id: str, **spec: Any) -> httpx.Response:
        body = {"model_id": model_id, "data": "builtin://digits", "loss": "cross_entropy", **spec}
        headers = self.auth(key)
        if "idempotency_key" in spec:
            headers["Idempotency-Key"] = body.pop("idempotency_key")
        return self.client.post("/v1/jobs", headers=headers, json=body)

    def job_id(self, key: str, model_id: str | None = None, **spec: Any) -> str:
        response = self.submit(key, model_id or self.model_id(key), **spec)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])


@contextmanager
def start_api(url: str, data_dir: Path, **overrides: Any) -> Iterator[RunningApi]:
    settings = make_settings(data_dir, url, **({"max_upload_bytes": API_UPLOAD_CAP} | overrides))
    queue = RecordingQueue()
    app = create_app(settings, queue=queue)
    with TestClient(app) as client:
        sessions = app.state.services.sessions
        yield RunningApi(
            client=client,
            queue=queue,
            settings=settings,
            sessions=sessions,
            key_a=keys.create_key(sessions, ApiKeyCreate(name="a")).secret,
            key_b=keys.create_key(sessions, ApiKeyCreate(name="b")).secret,
            admin=keys.create_key(sessions, ApiKeyCreate(name="root", admin=True)).secret,
        )


def safetensors_mlp(metadata: bool = True) -> bytes:
    rng = np.random.default_rng(0)
    tensors = {
        "layers.0.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "layers.0.bias": np.zeros(8, np.float32),
        "layers.2.weight": rng.standard_normal((3, 8)).astype(np.float32),
        "layers.2.bias": np.zeros(3, np.float32),
    }
    meta = {"lrprobe.arch": "mlp", "lrprobe.arch_config": json.dumps(MLP_CONFIG)}
    return save_safetensors(tensors, metadata=meta if metadata else None)


def zip_archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def probe_result(**overrides: Any) -> dict[str, Any]:
    """A recommendation shaped like ``ProbeResult.to_dict()``."""
    group = {
        "name": "layers.0", "param_names": ["layers.0.weight", "layers.0.bias"], "numel": 40,
        "lr": 0.1, "lr_interval": [0.05, 0.2], "eta": 0.2, "eta_interval": [0.1, 0.4],
        "eta_newton": 0.25, "eta_diagonal": None, "g": 1.0, "g_snr": 3.0, "h": 5.0,
        "curvature": 4.0, "d3": None,
        "spread": {"median": 0.2, "iqr": 0.05, "negative_fraction": 0.0}, "flags": [],
    }  # fmt: skip
    result = {
        "optimizer": {"name": "sgd"}, "direction": "gradient", "lr_factor": 1.0, "scale": 0.5,
        "groups": [group], "single_group_lr": 0.1, "single_group_eta": 0.2,
        "single_group_interval": [0.05, 0.3], "status": "ok", "lam_int": 1.0, "loss": 2.3,
        "hessian_eigenvalues": [5.0], "coupling": [[1.0]],
        "predicted_decrease": {"quadratic": 0.1, "cubic": None},
        "scale_checks": [{"scale": 1.0, "predicted": -0.1, "realised": -0.08, "ratio": 0.8}],
        "cost": {"batches": 16, "passes": {"forward_backward": 32}, "seconds": 1.5,
                 "fb_seconds": 0.01, "fb_equivalents": 150.0, "device": "cpu"},
        "method_version": "gn-probe/0.1", "notes": [], "method": "trajectory",
        "trajectory_losses": [2.3, 2.2],
    }  # fmt: skip
    return result | overrides
