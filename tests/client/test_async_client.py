"""AsyncClient: the same surface as Client, awaitable, on ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from lrprobe.client import AsyncClient, AsyncJob, ConnectionFailed, NotFound
from tests.client.fakes import (
    FakeApi,
    dataset_body,
    job_body,
    model_body,
    problem,
    recommendation_body,
    sse,
)


def client_for(api: FakeApi, **kwargs: object) -> AsyncClient:
    return AsyncClient("http://lrprobe.test", api_key="k", backoff=0.0,
                       transport=httpx.MockTransport(api), **kwargs)  # type: ignore[arg-type]  # fmt: skip


def test_every_method_round_trips(tmp_path: Path) -> None:
    api = FakeApi()
    api.on("POST", "/v1/models", httpx.Response(201, json=model_body()))
    api.on("GET", "/v1/models/m1", httpx.Response(200, json=model_body()))
    api.on("POST", "/v1/datasets", httpx.Response(201, json=dataset_body()))
    api.on("GET", "/v1/datasets/d1", httpx.Response(200, json=dataset_body()))
    api.on("POST", "/v1/jobs", problem(503, "service_unavailable"),
           httpx.Response(202, json=job_body()))  # fmt: skip
    api.on("GET", "/v1/jobs/j1", httpx.Response(200, json=job_body(status="succeeded")))
    api.on("GET", "/v1/jobs/j1/events", sse((None, "end", {"status": "succeeded"})))
    api.on("GET", "/v1/jobs/j1/recommendation", httpx.Response(200, json=recommendation_body()))
    api.on("POST", "/v1/jobs/j1/cancel", problem(409, "job_finished"))
    api.on("GET", "/v1/jobs", lambda r: httpx.Response(200, json=(
        {"items": [job_body("j1")], "next_cursor": "c"} if "cursor" not in r.url.params
        else {"items": [job_body("j2")], "next_cursor": None})))  # fmt: skip
    api.on("GET", "/healthz", httpx.Response(200, json={"status": "ok", "version": "1"}))
    (tmp_path / "m.safetensors").write_bytes(b"w")
    (tmp_path / "d.csv").write_text("a,y\n1,0\n")

    async def scenario() -> None:
        async with client_for(api) as lrp:
            model = await lrp.upload_model(tmp_path / "m.safetensors", arch="mlp")
            assert (await lrp.get_model(model.id)).id == "m1"
            dataset = await lrp.upload_dataset(tmp_path / "d.csv")
            assert (await lrp.get_dataset(dataset.id)).uri == "upload://d1"
            job = await lrp.submit(model=model, data=dataset, wait=True, progress=False)
            assert isinstance(job, AsyncJob) and job.status == "succeeded"
            rec = await job.recommendation()
            assert rec.lrs == {"0": 0.1, "2": 0.02}
            assert [j.id async for j in lrp.list_jobs()] == ["j1", "j2"]
            assert (await lrp.health()).status == "ok"
            with pytest.raises(Exception, match="job_finished"):
                await job.cancel()

    asyncio.run(scenario())
    keys = {r.headers["idempotency-key"] for r in api.sent("POST", "/v1/jobs")}
    assert len(api.sent("POST", "/v1/jobs")) == 2 and len(keys) == 1
    assert json.loads(api.sent("POST", "/v1/jobs")[0].content)["data"] == "upload://d1"


def test_polling_fallback_and_errors() -> None:
    api = FakeApi()
    api.on("GET", "/v1/jobs/j1", httpx.Response(200, json=job_body(status="running")),
           httpx.Response(200, json=job_body(status="cancelled")))  # fmt: skip
    api.on("GET", "/v1/jobs/j1/events", httpx.Response(
        200, json={"items": [], "status": "cancelled", "final": True}))  # fmt: skip
    api.on("GET", "/v1/jobs/nope", problem(404, "job_not_found"))
    api.on("GET", "/v1/jobs/down", httpx.ConnectError("refused"))

    async def scenario() -> None:
        async with client_for(api, retries=1) as lrp:
            assert (await lrp.wait("j1")).status == "cancelled"
            with pytest.raises(NotFound):
                await lrp.get_job("nope")
            with pytest.raises(ConnectionFailed):
                await lrp.get_job("down")

    asyncio.run(scenario())
    assert len(api.sent("GET", "/v1/jobs/down")) == 2
