"""Every SDK method against the real app (``create_app`` on a migrated SQLite database, a
recording queue instead of the broker); the worker is simulated with
``lrprobe.service.lifecycle``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lrprobe.client import (
    AsyncClient,
    Client,
    Conflict,
    JobFailed,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from lrprobe.client._jobs import Follower
from lrprobe.client._sse import ServerSentEvent, StreamUnavailable
from tests.client.app_support import finish
from tests.service.api_support import RunningApi, safetensors_mlp, start_api
from tests.support.databases import sqlite_copy


@pytest.fixture
def api(sqlite_template: Path, tmp_path: Path) -> Iterator[RunningApi]:
    url = sqlite_copy(sqlite_template, tmp_path / "lrprobe.sqlite")
    with start_api(url, tmp_path) as running:
        yield running


def sdk(api: RunningApi, key: str) -> Client:
    return Client(api_key=key, http_client=api.client, backoff=0.0)


def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.safetensors"
    path.write_bytes(safetensors_mlp())
    return path


def test_upload_submit_wait_and_recommendation(api: RunningApi, tmp_path: Path) -> None:
    lrp = sdk(api, api.key_a)
    model = lrp.upload_model(checkpoint(tmp_path))
    assert model.arch == "mlp" and lrp.get_model(model.id) == model
    (tmp_path / "d.csv").write_text("a,b,c,d,y\n1,2,3,4,0\n")
    dataset = lrp.upload_dataset(tmp_path / "d.csv")
    assert lrp.get_dataset(dataset.id) == dataset
    job = lrp.submit(model=model, data="builtin://digits", optimizer="adam", budget={"batches": 4})
    # No time limit in the request: the job is sent with the server's default (one reader).
    default = api.settings.default_time_limit_seconds
    assert job.status == "queued" and api.queue.sent == [(job.id, default)]
    with pytest.raises(Conflict) as caught:
        job.recommendation()
    assert caught.value.code == "job_not_finished"

    finish(api, job.id)
    assert job.wait(timeout=10).status == "succeeded"
    assert job.data.progress.done == 4
    rec = job.recommendation()
    assert rec.lrs == {"layers.0": 0.1} and rec.job_id == job.id
    assert lrp.recommendation(job.id) == rec


def test_wait_follows_a_job_that_finishes_while_streaming(
    api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    lrp = sdk(api, api.key_a)
    job = lrp.submit(model=api.model_id(api.key_a), data="builtin://digits")
    streamed: list[str] = []
    on_sse = Follower.on_sse

    def worker_finishes_once_the_stream_is_open(follower: Follower, event: ServerSentEvent) -> bool:
        streamed.append(event.event)
        if len(streamed) == 1:
            finish(api, job.id)
        return on_sse(follower, event)

    monkeypatch.setattr(Follower, "on_sse", worker_finishes_once_the_stream_is_open)
    lrp._sleep = lambda _s: pytest.fail("wait fell back on polling")

    assert job.wait(timeout=20, progress=False).status == "succeeded"
    # the stream carried the job from queued to its end: one connection, no polling
    assert streamed[0] == "status" and streamed[-1] == "end"
    assert "progress" in streamed


def test_wait_by_polling_the_events_endpoint(
    api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_stream(*_args: object) -> bool:
        raise StreamUnavailable

    lrp = sdk(api, api.key_a)
    monkeypatch.setattr(lrp, "_stream", no_stream)
    job = lrp.submit(model=api.model_id(api.key_a), data="builtin://digits")
    lrp._sleep = lambda _s: finish(api, job.id)  # the worker finishes while we sleep
    assert job.wait(progress=False).status == "succeeded"


def test_a_failed_job_raises_job_failed_with_the_workers_code(api: RunningApi) -> None:
    lrp = sdk(api, api.key_a)
    job = lrp.submit(model=api.model_id(api.key_a), data="builtin://digits")
    finish(api, job.id, fail=True)
    with pytest.raises(JobFailed) as caught:
        job.wait(progress=False).recommendation()
    assert caught.value.code == "out_of_memory"


def test_idempotent_submission_list_and_cancel(api: RunningApi) -> None:
    lrp = sdk(api, api.key_a)
    model_id = api.model_id(api.key_a)
    first = lrp.submit(model=model_id, data="builtin://digits", idempotency_key="once")
    again = lrp.submit(model=model_id, data="builtin://digits", idempotency_key="once")
    assert again.id == first.id and len(api.queue.sent) == 1
    with pytest.raises(Conflict) as caught:
        lrp.submit(model=model_id, data="builtin://digits", seed=1, idempotency_key="once")
    assert caught.value.code == "idempotency_conflict"

    ids = [first.id] + [lrp.submit(model=model_id, data="builtin://digits").id for _ in range(4)]
    assert lrp.cancel(ids[0]).status == "cancelled"
    assert [j.id for j in lrp.list_jobs(page_size=2)] == ids[::-1]
    assert [j.id for j in lrp.list_jobs(status="cancelled")] == [ids[0]]
    with pytest.raises(JobFailed) as failed:
        lrp.get_job(ids[0]).recommendation()
    assert failed.value.code == "cancelled"


def test_problems_become_typed_exceptions(api: RunningApi, tmp_path: Path) -> None:
    lrp = sdk(api, api.key_a)
    with pytest.raises(NotFound) as missing:
        lrp.get_job("no-such-job")
    assert missing.value.code == "job_not_found" and missing.value.status == 404
    with pytest.raises(ValidationFailed) as refused:
        lrp.submit(model=api.model_id(api.key_a), data="builtin://imagenet")
    assert refused.value.code == "unknown_builtin_dataset"
    (tmp_path / "m.pt").write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ValidationFailed):
        lrp.upload_model(tmp_path / "m.pt")
    with pytest.raises(Unauthorized) as unknown:
        sdk(api, "lrp_wrong").get_job("x")
    assert unknown.value.code == "unauthorized"
    with pytest.raises(NotFound):  # another key's job does not exist for this key
        sdk(api, api.key_b).get_job(
            lrp.submit(model=api.model_id(api.key_a), data="builtin://digits").id
        )


def test_keys_need_an_admin_key(api: RunningApi) -> None:
    admin = sdk(api, api.admin)
    created = admin.create_key("ci")
    assert created.secret.startswith("lrp_")
    assert "ci" in [k.name for k in admin.list_keys()]
    assert sdk(api, created.secret).health().status == "ok"
    assert admin.revoke_key(created.id).revoked_at is not None
    with pytest.raises(Unauthorized):
        sdk(api, created.secret).get_job("x")
    with pytest.raises(Unauthorized) as forbidden:
        sdk(api, api.key_a).create_key("nope")
    assert forbidden.value.code == "admin_required"


def test_the_async_client_against_the_app(api: RunningApi, tmp_path: Path) -> None:
    transport = httpx.ASGITransport(app=api.client.app)
    path = checkpoint(tmp_path)

    async def scenario() -> str:
        async with AsyncClient("http://testserver", api.key_a, transport=transport) as lrp:
            model = await lrp.upload_model(path)
            job = await lrp.submit(model=model.id, data="builtin://digits")
            await asyncio.to_thread(finish, api, job.id)
            await job.wait(progress=False)
            rec = await job.recommendation()
            assert [j.id async for j in lrp.list_jobs()] == [job.id]
            return str(rec.lrs)

    assert asyncio.run(scenario()) == "{'layers.0': 0.1}"
