"""A scripted lrprobe API for SDK unit tests: canned bodies, recorded requests."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from lrprobe.client import Client

Handler = Callable[[httpx.Request], httpx.Response]

NOW = "2025-01-01T00:00:00Z"


def job_body(job_id: str = "j1", status: str = "queued", **overrides: Any) -> dict[str, Any]:
    body = {
        "id": job_id,
        "status": status,
        "created_at": NOW,
        "spec": {"model_id": "m1", "data": "builtin://digits", "loss": "cross_entropy"},
        "model_id": "m1",
    }
    return body | overrides


def model_body(model_id: str = "m1") -> dict[str, Any]:
    return {
        "id": model_id, "sha256": "0" * 64, "filename": "m.safetensors", "size_bytes": 10,
        "format": "safetensors", "arch": "mlp", "created_at": NOW,
    }  # fmt: skip


def dataset_body(dataset_id: str = "d1") -> dict[str, Any]:
    return {
        "id": dataset_id, "sha256": "1" * 64, "filename": "d.csv", "size_bytes": 5,
        "format": "csv", "created_at": NOW, "uri": f"upload://{dataset_id}",
    }  # fmt: skip


def group_body(name: str, param_names: list[str], lr: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "param_names": param_names, "numel": 10, "lr": lr,
        "lr_interval": [None if lr is None else lr / 2, None if lr is None else lr * 2],
        "eta": lr, "eta_interval": [lr, lr], "spread": {"median": lr}, "flags": [],
    } | extra  # fmt: skip


def recommendation_body(**overrides: Any) -> dict[str, Any]:
    """Shaped like ``ProbeResult.to_dict()`` for a ``Linear(4, 8) → Tanh → Linear(8, 3)``."""
    body = {
        "method_version": "gn-probe/0.1", "optimizer": {"name": "sgd"}, "direction": "gradient",
        "lr_factor": 1.0, "scale": 0.5, "single_group_lr": 0.05,
        "single_group_eta": 0.1, "single_group_interval": [0.02, 0.08], "status": "ok",
        "groups": [
            group_body("0", ["0.weight", "0.bias"], 0.1),
            group_body("2", ["2.weight", "2.bias"], 0.02, flags=["noisy"]),
        ],
        "cost": {"batches": 8, "seconds": 0.5, "device": "cpu"},
        "a_future_field": [1, 2],
    }  # fmt: skip
    return body | overrides


def problem(
    status: int, code: str, detail: str = "what went wrong", **headers: str
) -> httpx.Response:
    body = {"type": f"urn:lrprobe:problem:{code}", "title": "t", "status": status,
            "detail": detail, "code": code, "errors": []}  # fmt: skip
    return httpx.Response(
        status, json=body, headers={"content-type": "application/problem+json", **headers}
    )


def sse(*events: tuple[int | None, str, dict[str, Any]]) -> httpx.Response:
    text = "retry: 2000\n\n: keep-alive\n\n"
    for event_id, kind, data in events:
        head = f"id: {event_id}\n" if event_id is not None else ""
        text += f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"
    return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


@dataclass
class FakeApi:
    """Routes ``(METHOD, path)`` to a queue of answers (the last one repeats)."""

    routes: dict[tuple[str, str], list[httpx.Response | Handler | Exception]] = field(
        default_factory=dict
    )
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, *answers: httpx.Response | Handler | Exception) -> None:
        self.routes[(method, path)] = list(answers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answers = self.routes.get((request.method, request.url.path))
        if not answers:
            return problem(404, "not_found", f"no route {request.method} {request.url.path}")
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if (r.method, r.url.path) == (method, path)]

    def client(self, **kwargs: Any) -> Client:
        options: dict[str, Any] = {"api_key": "lrp_test", "backoff": 0.0} | kwargs
        return Client("http://lrprobe.test", transport=httpx.MockTransport(self), **options)
