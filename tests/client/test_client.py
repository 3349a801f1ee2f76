"""The SDK on ``httpx.MockTransport``: what each method sends, what it returns, retries only where
sending twice is harmless, pagination, idempotency keys."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from lrprobe.client import (
    Client,
    ConnectionFailed,
    DatasetOut,
    Job,
    ModelOut,
    ServerError,
    ValidationFailed,
)
from tests.client.fakes import (
    NOW,
    FakeApi,
    dataset_body,
    job_body,
    model_body,
    problem,
    recommendation_body,
)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def test_url_and_key_come_from_the_environment(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LRPROBE_URL", "http://env.example:9000/")
    monkeypatch.setenv("LRPROBE_API_KEY", "lrp_env")
    api.on("GET", "/healthz", httpx.Response(200, json={"status": "ok", "version": "1"}))
    with Client(transport=httpx.MockTransport(api)) as lrp:
        assert lrp.base_url == "http://env.example:9000"
        assert lrp.health().version == "1"
    request = api.requests[0]
    assert str(request.url) == "http://env.example:9000/healthz"
    assert request.headers["authorization"] == "Bearer lrp_env"
    assert request.headers["user-agent"].startswith("lrprobe-python/")


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRPROBE_URL", "http://env.example")
    monkeypatch.setenv("LRPROBE_API_KEY", "lrp_env")
    with Client("http://arg.example", api_key="lrp_arg") as lrp:
        assert lrp.base_url == "http://arg.example"
        assert lrp._headers["Authorization"] == "Bearer lrp_arg"


def test_an_injected_http_client_is_used_and_left_open(api: FakeApi) -> None:
    api.on("GET", "/v1/jobs/j1", httpx.Response(200, json=job_body()))
    http = httpx.Client(base_url="http://injected.test", transport=httpx.MockTransport(api))
    with Client(api_key="k", http_client=http) as lrp:
        assert lrp.get_job("j1").status == "queued"
    assert not http.is_closed
    assert api.requests[0].url.host == "injected.test"
    http.close()


def test_upload_model_streams_the_file_with_its_arch_fields(api: FakeApi, tmp_path: Path) -> None:
    api.on("POST", "/v1/models", httpx.Response(201, json=model_body()))
    checkpoint = tmp_path / "net.safetensors"
    checkpoint.write_bytes(b"weights")
    model = api.client().upload_model(checkpoint, arch="mlp", arch_config={"sizes": [4, 3]})
    assert isinstance(model, ModelOut) and model.id == "m1"
    body = api.requests[0].content
    assert b'filename="net.safetensors"' in body and b"weights" in body
    assert b'name="arch"\r\n\r\nmlp' in body
    assert b'{"sizes": [4, 3]}' in body


def test_a_model_folder_is_sent_as_a_zip_archive(api: FakeApi, tmp_path: Path) -> None:
    api.on("POST", "/v1/models", httpx.Response(201, json=model_body()))
    folder = tmp_path / "tiny-gpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w")
    api.client().upload_model(folder)
    body = api.requests[0].content
    assert b'filename="tiny-gpt.zip"' in body and b"tiny-gpt/config.json" in body


def test_upload_of_a_missing_file_fails_before_sending(api: FakeApi, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        api.client().upload_model(tmp_path / "nope.safetensors")
    assert api.requests == []


def test_upload_dataset_returns_its_uri(api: FakeApi, tmp_path: Path) -> None:
    api.on("POST", "/v1/datasets", httpx.Response(201, json=dataset_body()))
    (tmp_path / "d.csv").write_text("a,y\n1,0\n")
    dataset = api.client().upload_dataset(tmp_path / "d.csv")
    assert isinstance(dataset, DatasetOut) and dataset.uri == "upload://d1"


def test_get_model_and_dataset(api: FakeApi) -> None:
    api.on("GET", "/v1/models/m1", httpx.Response(200, json=model_body()))
    api.on("GET", "/v1/datasets/d1", httpx.Response(200, json=dataset_body()))
    lrp = api.client()
    assert lrp.get_model("m1").format == "safetensors"
    assert lrp.get_dataset("d1").uri == "upload://d1"


def test_submit_sends_the_validated_spec_and_an_idempotency_key(api: FakeApi) -> None:
    api.on("POST", "/v1/jobs", httpx.Response(202, json=job_body()))
    job = api.client().submit(
        model="m1", data="builtin://digits", loss="mse", optimizer="adam",
        partition={"rule": {"^enc": "encoder"}}, budget={"batches": 4}, seed=3, label="x",
    )  # fmt: skip
    assert isinstance(job, Job) and job.id == "j1"
    request = api.requests[0]
    sent = json.loads(request.content)
    assert sent["model_id"] == "m1" and sent["loss"] == "mse" and sent["seed"] == 3
    assert sent["optimizer"]["name"] == "adam"
    assert sent["partition"]["rule"] == {"^enc": "encoder"}
    assert sent["budget"]["batches"] == 4 and sent["label"] == "x"
    assert len(request.headers["idempotency-key"]) == 32


def test_submit_accepts_uploaded_objects_and_uploads_local_paths(
    api: FakeApi, tmp_path: Path
) -> None:
    api.on("POST", "/v1/models", httpx.Response(201, json=model_body("m9")))
    api.on("POST", "/v1/datasets", httpx.Response(201, json=dataset_body("d9")))
    api.on("POST", "/v1/jobs", httpx.Response(202, json=job_body()))
    (tmp_path / "m.safetensors").write_bytes(b"w")
    (tmp_path / "d.npz").write_bytes(b"d")
    api.client().submit(model=tmp_path / "m.safetensors", data=tmp_path / "d.npz")
    sent = json.loads(api.sent("POST", "/v1/jobs")[0].content)
    assert (sent["model_id"], sent["data"]) == ("m9", "upload://d9")


def test_a_bad_spec_fails_locally_with_the_services_exception(api: FakeApi) -> None:
    with pytest.raises(ValidationFailed) as caught:
        api.client().submit(model="m1", data="builtin://digits", budget={"batches": 0})
    assert caught.value.code == "validation_error"
    assert caught.value.problem is not None
    assert caught.value.problem.errors[0].loc == ["body", "budget", "batches"]
    assert api.requests == []


def test_a_retried_submit_reuses_its_idempotency_key(api: FakeApi) -> None:
    api.on("POST", "/v1/jobs", problem(503, "service_unavailable"),
           httpx.ReadTimeout("slow"), httpx.Response(200, json=job_body()))  # fmt: skip
    api.client().submit(model="m1", data="builtin://digits")
    keys = {r.headers["idempotency-key"] for r in api.requests}
    assert len(api.requests) == 3 and len(keys) == 1


def test_each_submit_call_has_its_own_idempotency_key(api: FakeApi) -> None:
    api.on("POST", "/v1/jobs", httpx.Response(202, json=job_body()))
    lrp = api.client()
    lrp.submit(model="m1", data="builtin://digits")
    lrp.submit(model="m1", data="builtin://digits", idempotency_key="mine")
    first, second = (r.headers["idempotency-key"] for r in api.requests)
    assert first != second and second == "mine"


@pytest.mark.parametrize("status", [502, 503, 504])
def test_reads_are_retried_on_gateway_errors(api: FakeApi, status: int) -> None:
    api.on("GET", "/v1/jobs/j1", httpx.Response(status, text="<html>bad gateway</html>"),
           httpx.Response(200, json=job_body()))  # fmt: skip
    assert api.client().get_job("j1").id == "j1"
    assert len(api.requests) == 2


def test_reads_are_retried_on_connection_errors_then_give_up(api: FakeApi) -> None:
    api.on("GET", "/v1/jobs/j1", httpx.ConnectError("refused"))
    with pytest.raises(ConnectionFailed) as caught:
        api.client(retries=2).get_job("j1")
    assert len(api.requests) == 3
    assert caught.value.code == "connection_error" and caught.value.status is None


def test_retry_waits_back_off_and_honour_retry_after(api: FakeApi) -> None:
    api.on("GET", "/v1/jobs/j1", httpx.ReadError("reset"),
           problem(503, "service_unavailable", **{"Retry-After": "2"}),
           httpx.Response(200, json=job_body()))  # fmt: skip
    lrp = api.client(backoff=0.5)
    waits: list[float] = []
    lrp._sleep = waits.append
    lrp.get_job("j1")
    assert 0.25 <= waits[0] <= 0.5 and waits[1] == 2.0


def test_the_last_gateway_error_is_raised_typed(api: FakeApi) -> None:
    api.on("GET", "/v1/jobs/j1", httpx.Response(502, text="bad gateway"))
    with pytest.raises(ServerError) as caught:
        api.client(retries=1).get_job("j1")
    assert (caught.value.status, caught.value.code) == (502, "http_502")


@pytest.mark.parametrize(
    ("call", "method", "path"),
    [
        (lambda c, p: c.upload_model(p), "POST", "/v1/models"),
        (lambda c, p: c.upload_dataset(p), "POST", "/v1/datasets"),
        (lambda c, p: c.cancel("j1"), "POST", "/v1/jobs/j1/cancel"),
        (lambda c, p: c.create_key("ci"), "POST", "/v1/keys"),
        (lambda c, p: c.revoke_key("k1"), "DELETE", "/v1/keys/k1"),
    ],
)
@pytest.mark.parametrize(
    "failure",
    [problem(503, "service_unavailable"), httpx.Response(502), httpx.ReadTimeout("slow")],
)
def test_calls_that_are_not_idempotent_are_never_resent_once_they_reached_the_server(
    api: FakeApi, tmp_path: Path, call: object, method: str, path: str,
    failure: httpx.Response | Exception,
) -> None:  # fmt: skip
    (tmp_path / "f.bin").write_bytes(b"x")
    api.on(method, path, failure, httpx.Response(200, json={}))
    with pytest.raises((ServerError, ConnectionFailed)):
        call(api.client(), tmp_path / "f.bin")  # type: ignore[operator]
    assert len(api.requests) == 1


def test_an_upload_that_could_not_connect_is_sent_again_whole(api: FakeApi, tmp_path: Path) -> None:
    api.on("POST", "/v1/models", httpx.ConnectError("refused"),
           httpx.Response(201, json=model_body()))  # fmt: skip
    (tmp_path / "m.safetensors").write_bytes(b"all the weights")
    api.client().upload_model(tmp_path / "m.safetensors")
    assert len(api.requests) == 2
    assert b"all the weights" in api.requests[1].content


def test_list_jobs_iterates_every_page_with_the_status_filter(api: FakeApi) -> None:
    pages = {
        None: {"items": [job_body("j1"), job_body("j2")], "next_cursor": "c1"},
        "c1": {"items": [job_body("j3")], "next_cursor": "c2"},
        "c2": {"items": [], "next_cursor": None},
    }
    api.on("GET", "/v1/jobs",
           lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]))  # fmt: skip
    jobs = api.client().list_jobs(status="queued", page_size=2)
    assert api.requests == []  # lazily: nothing is fetched before iterating
    assert [j.id for j in jobs] == ["j1", "j2", "j3"]
    assert [r.url.params.get("cursor") for r in api.requests] == [None, "c1", "c2"]
    assert {r.url.params["status"] for r in api.requests} == {"queued"}
    assert {r.url.params["limit"] for r in api.requests} == {"2"}


def test_cancel_and_job_methods(api: FakeApi) -> None:
    api.on("POST", "/v1/jobs/j1/cancel",
           httpx.Response(200, json=job_body(status="cancelled")))  # fmt: skip
    api.on("GET", "/v1/jobs/j1", httpx.Response(200, json=job_body(status="running")))
    lrp = api.client()
    job = lrp.cancel("j1")
    assert job.status == "cancelled" and job.done
    assert job.refresh().status == "running"
    assert job.cancel().status == "cancelled"
    assert repr(job) == "Job(id='j1', status='cancelled')"


def test_ids_are_quoted_into_paths(api: FakeApi) -> None:
    api.on("GET", "/v1/jobs/a/../b", httpx.Response(200, json=job_body()))
    api.client().get_job("a/../b")
    assert api.requests[0].url.raw_path == b"/v1/jobs/a%2F..%2Fb"


def test_recommendation_is_wrapped(api: FakeApi) -> None:
    api.on("GET", "/v1/jobs/j1/recommendation", httpx.Response(200, json=recommendation_body()))
    rec = api.client().recommendation("j1")
    assert rec.job_id == "j1" and rec.lrs == {"0": 0.1, "2": 0.02}


def test_keys(api: FakeApi) -> None:
    key = {"id": "k1", "name": "ci", "prefix": "lrp_ab", "admin": False, "created_at": NOW}
    api.on("POST", "/v1/keys", httpx.Response(201, json=key | {"secret": "lrp_secret"}))
    api.on("GET", "/v1/keys", httpx.Response(200, json=[key]))
    revoked = key | {"revoked_at": NOW}
    api.on("DELETE", "/v1/keys/k1", httpx.Response(200, json=revoked))
    lrp = api.client()
    assert lrp.create_key("ci").secret == "lrp_secret"
    assert json.loads(api.requests[0].content) == {"name": "ci", "admin": False}
    assert [k.id for k in lrp.list_keys()] == ["k1"]
    assert lrp.revoke_key("k1").revoked_at is not None
