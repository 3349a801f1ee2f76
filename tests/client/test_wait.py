"""Waiting for a job: the SSE stream first, polling when it is unavailable or breaks, a
deadline, and what a finished job's recommendation call gives."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest

from lrprobe.client import Conflict, JobFailed, NotFound, WaitTimeout
from lrprobe.client._sse import ServerSentEvent, SSEParser
from tests.client.fakes import FakeApi, job_body, problem, recommendation_body, sse

EVENTS = "/v1/jobs/j1/events"


def progress(done: int, total: int = 8) -> dict[str, object]:
    return {"job_id": "j1", "done": done, "total": total, "phase": "summaries"}


def page(*items: tuple[int, str, dict[str, object]], status: str, final: bool) -> httpx.Response:
    events = [{"id": i, "job_id": "j1", "at": "2025-01-01T00:00:00Z", "kind": k, "data": d}
              for i, k, d in items]  # fmt: skip
    return httpx.Response(200, json={"items": events, "status": status, "final": final})


def is_stream(request: httpx.Request) -> bool:
    return request.headers.get("accept") == "text/event-stream"


@pytest.fixture
def api() -> FakeApi:
    api = FakeApi()
    api.on("GET", "/v1/jobs/j1", httpx.Response(200, json=job_body(status="queued")),
           httpx.Response(200, json=job_body(status="succeeded")))  # fmt: skip
    return api


def test_the_sse_parser_follows_the_event_stream_format() -> None:
    parser = SSEParser()
    lines = ["retry: 2000", "", ": keep-alive", "", "id: 3", "event: progress",
             "data: {\"a\":", "data: 1}", "", "data: plain", "", "id: 9", ""]  # fmt: skip
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert events == [
        ServerSentEvent(event="progress", data='{"a":\n1}', id="3"),
        ServerSentEvent(event="message", data="plain"),
    ]
    assert parser.last_event_id == "9"


def test_wait_follows_the_event_stream_to_the_end(api: FakeApi) -> None:
    api.on("GET", EVENTS, sse((1, "status", {"status": "running"}), (2, "progress", progress(4)),
                              (3, "progress", progress(8)), (4, "status", {"status": "succeeded"}),
                              (None, "end", {"status": "succeeded"})))  # fmt: skip
    lrp = api.client()
    job = lrp.get_job("j1")
    assert job.wait(progress=True) is job
    assert job.status == "succeeded"
    streamed = api.sent("GET", EVENTS)
    assert len(streamed) == 1 and is_stream(streamed[0])
    assert streamed[0].url.params["after"] == "0"


def test_without_a_stream_wait_polls_from_the_last_event(api: FakeApi) -> None:
    api.on("GET", EVENTS, lambda r: (
        page((1, "status", {"status": "running"}), status="running", final=False)
        if is_stream(r) or r.url.params["after"] == "0"
        else page((2, "status", {"status": "succeeded"}), status="succeeded", final=True)
    ))  # fmt: skip
    lrp = api.client()
    sleeps: list[float] = []
    lrp._sleep = sleeps.append
    assert lrp.get_job("j1").wait(poll_interval=0.25).status == "succeeded"
    polled = [r.url.params["after"] for r in api.sent("GET", EVENTS) if not is_stream(r)]
    assert polled == ["0", "1"] and sleeps == [0.25]


def test_a_stream_that_breaks_is_resumed_by_polling_after_its_last_event(
    api: FakeApi,
) -> None:
    class Broken(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b'id: 5\nevent: progress\ndata: {"done": 1, "total": 8}\n\n'
            raise httpx.ReadError("connection reset")

    api.on("GET", EVENTS, lambda r: (
        httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Broken())
        if is_stream(r) else page(status="succeeded", final=True)
    ))  # fmt: skip
    api.client().get_job("j1").wait(progress=False)
    polled = [r.url.params["after"] for r in api.sent("GET", EVENTS) if not is_stream(r)]
    assert polled == ["5"]


@pytest.mark.parametrize(
    "answer",
    [problem(502, "http_502"), problem(404, "not_found"),
     problem(429, "too_many_streams", **{"Retry-After": "10"})],
    ids=["proxy", "no-stream-route", "key-holds-all-its-streams"],
)  # fmt: skip
def test_a_server_or_proxy_that_cannot_stream_means_polling(
    api: FakeApi, answer: httpx.Response
) -> None:
    api.on("GET", EVENTS, lambda r: answer if is_stream(r) else page(status="failed", final=True))
    assert api.client(retries=0).get_job("j1").wait().status == "succeeded"


def test_a_missing_job_is_an_error_not_a_fallback(api: FakeApi) -> None:
    api.on("GET", EVENTS, problem(404, "job_not_found"))
    with pytest.raises(NotFound):
        api.client().get_job("j1").wait()


def test_wait_gives_up_after_its_timeout(api: FakeApi) -> None:
    api.on("GET", EVENTS, page(status="running", final=False))
    job = api.client().get_job("j1")
    with pytest.raises(WaitTimeout, match=r"not final after 0\.05 s") as caught:
        job.wait(timeout=0.05, poll_interval=0.01)
    assert isinstance(caught.value, TimeoutError)


def test_the_progress_bar_shows_the_batches_and_the_status_without_a_rate(
    api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("GET", EVENTS, sse((1, "status", {"status": "running"}), (2, "progress", progress(4)),
                              (3, "progress", progress(8)), (4, "status", {"status": "succeeded"}),
                              (None, "end", {"status": "succeeded"})))  # fmt: skip
    api.client().get_job("j1").wait(progress=True)
    shown = capsys.readouterr().err.replace("\r", "\n").splitlines()
    last = [line for line in shown if line.strip()][-1]
    assert "8/" in last and "succeeded" in last
    assert "batch/s" not in "".join(shown) and "s/batch" not in "".join(shown)


def test_waiting_works_without_tqdm(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    api.on("GET", EVENTS, sse((None, "end", {"status": "succeeded"})))
    assert api.client().get_job("j1").wait(progress=True).status == "succeeded"


def test_a_final_job_returns_at_once(api: FakeApi) -> None:
    api.on("GET", "/v1/jobs/j1", httpx.Response(200, json=job_body(status="failed")))
    assert api.client().get_job("j1").wait().status == "failed"
    assert api.sent("GET", EVENTS) == []


def test_a_failed_job_has_no_recommendation_and_says_why(api: FakeApi) -> None:
    failed = job_body(status="failed", error={"code": "out_of_memory", "detail": "Lower it."})
    api.on("GET", "/v1/jobs/j1", httpx.Response(200, json=failed))
    api.on("GET", "/v1/jobs/j1/recommendation", problem(409, "job_not_finished"))
    with pytest.raises(JobFailed) as caught:
        api.client().get_job("j1").recommendation()
    assert caught.value.code == "out_of_memory" and "Lower it." in str(caught.value)
    assert caught.value.job.status == "failed"


def test_a_running_job_has_no_recommendation_yet(api: FakeApi) -> None:
    api.on("GET", "/v1/jobs/j1", httpx.Response(200, json=job_body(status="running")))
    api.on("GET", "/v1/jobs/j1/recommendation", problem(409, "job_not_finished"))
    with pytest.raises(Conflict) as caught:
        api.client().get_job("j1").recommendation()
    assert caught.value.code == "job_not_finished"


def test_submit_with_wait_returns_the_final_job(api: FakeApi) -> None:
    api.on("POST", "/v1/jobs", httpx.Response(202, json=job_body()))
    api.on("GET", "/v1/jobs/j1", httpx.Response(200, json=job_body(status="succeeded")))
    api.on("GET", EVENTS, sse((None, "end", {"status": "succeeded"})))
    api.on("GET", "/v1/jobs/j1/recommendation", httpx.Response(200, json=recommendation_body()))
    job = api.client().submit(model="m1", data="builtin://digits", wait=True, progress=False)
    assert job.status == "succeeded"
    assert job.recommendation().lrs["0"] == 0.1
