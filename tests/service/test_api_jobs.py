"""Jobs through HTTP: submit (idempotent), list, read, cancel, recommendation and events; a key
sees only its own jobs."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import insert

from lrprobe.service import lifecycle
from lrprobe.service.keys import authenticate
from lrprobe.service.models import Job, utcnow
from tests.service.api_support import RunningApi, probe_result


def test_a_job_is_queued_and_sent_after_commit(api: RunningApi) -> None:
    model_id = api.model_id(api.key_a)
    response = api.submit(api.key_a, model_id, optimizer="adam", partition="tensor",
                          budget={"time_limit_s": 60}, label="first")  # fmt: skip
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["spec"]["optimizer"]["name"] == "adam"
    assert job["spec"]["partition"] == {"rule": "tensor", "max_groups": None}
    assert job["label"] == "first"
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert api.queue.sent == [(job["id"], 60.0)]
    with api.sessions() as session:  # committed before it was sent
        assert session.get_one(Job, job["id"]).spec["budget"]["time_limit_s"] == 60.0


def test_an_idempotency_key_replays_the_same_job_and_refuses_another_body(
    api: RunningApi,
) -> None:
    model_id = api.model_id(api.key_a)
    first = api.submit(api.key_a, model_id, idempotency_key="abc")
    again = api.submit(api.key_a, model_id, idempotency_key="abc")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert len(api.queue.sent) == 1
    other = api.submit(api.key_a, model_id, idempotency_key="abc", seed=1)
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_conflict")
    # Keys are per API key: another key may use the same Idempotency-Key.
    theirs = api.submit(api.key_b, api.model_id(api.key_b), idempotency_key="abc")
    assert theirs.status_code == 202


def test_a_job_is_accepted_even_when_the_broker_is_down(api: RunningApi) -> None:
    api.queue.fail = True
    response = api.submit(api.key_a, api.model_id(api.key_a))
    assert response.status_code == 202  # the reaper re-sends jobs queued for too long
    assert response.json()["status"] == "queued"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        ("builtin://imagenet", 422, "unknown_builtin_dataset"),
        ("ftp://example.com/x.npz", 422, "unsupported_data_scheme"),
        ("http://data.example.com/x.npz", 422, "unsupported_data_scheme"),
        ("/etc/passwd", 422, "unsupported_data_scheme"),
        ("file:///etc/passwd", 422, "data_ref_refused"),
        ("file:///DATA/../etc/passwd", 422, "data_ref_refused"),
        ("https://evil.example.org/x.npz", 422, "host_not_allowed"),
        ("s3://other-bucket/x.npz", 422, "host_not_allowed"),
        ("upload://0123456789abcdef", 404, "dataset_not_found"),
    ],
)
def test_data_references_outside_the_policy_are_refused_at_submit(
    api: RunningApi, data: str, status: int, code: str
) -> None:
    data = data.replace("/DATA", str(api.settings.data_roots[0]))
    response = api.submit(api.key_a, api.model_id(api.key_a), data=data)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert api.queue.sent == []


def test_allowed_data_references_are_accepted(api: RunningApi) -> None:
    model_id = api.model_id(api.key_a)
    dataset = api.client.post(
        "/v1/datasets", headers=api.auth(api.key_a), files={"file": ("d.csv", b"a,y\n1,0\n")}
    ).json()
    root = api.settings.data_roots[0]
    for data in ["builtin://digits?shape=image", f"file://{root}/train.npz",
                 "https://data.example.com/t.csv#target=y", dataset["uri"]]:  # fmt: skip
        assert api.submit(api.key_a, model_id, data=data).status_code == 202, data
    # key B cannot use key A's upload
    theirs = api.submit(api.key_b, api.model_id(api.key_b), data=dataset["uri"])
    assert theirs.json()["code"] == "dataset_not_found"


def test_bad_specs_get_field_errors(api: RunningApi) -> None:
    model_id = api.model_id(api.key_a)
    response = api.submit(api.key_a, model_id, loss="hinge", budget={"batches": 0},
                          optimizer={"name": "sgd", "nesterov": True})  # fmt: skip
    problem = response.json()
    assert (response.status_code, problem["code"]) == (422, "validation_error")
    locs = {tuple(e["loc"]) for e in problem["errors"]}
    assert {("body", "loss"), ("body", "budget", "batches"), ("body", "optimizer")} <= locs
    missing = api.submit(api.key_a, "no-such-model")
    assert (missing.status_code, missing.json()["code"]) == (404, "model_not_found")


@pytest.mark.parametrize(
    "budget",
    [
        {"calibration_steps": 0},
        {"calibration_steps": 257},
        {"calibration_steps": 4.0},  # strict: an integer
        {"micro_batch": 0},
        {"micro_batch": 8193},
    ],
)
def test_the_calibration_length_and_micro_batch_are_bounded(
    api: RunningApi, budget: dict[str, object]
) -> None:
    response = api.submit(api.key_a, api.model_id(api.key_a), budget=budget)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert [tuple(e["loc"]) for e in problem["errors"]] == [("body", "budget", *budget)]
    assert api.queue.sent == []


def test_the_calibration_length_and_micro_batch_are_stored_with_the_job(api: RunningApi) -> None:
    model_id = api.model_id(api.key_a)
    response = api.submit(api.key_a, model_id, budget={"calibration_steps": 256, "micro_batch": 1})
    assert response.status_code == 202, response.text
    budget = response.json()["spec"]["budget"]
    assert (budget["calibration_steps"], budget["micro_batch"]) == (256, 1)
    default = api.submit(api.key_a, model_id).json()["spec"]["budget"]
    assert (default["calibration_steps"], default["micro_batch"]) == (40, None)


def test_jobs_are_listed_newest_first_in_pages_and_filtered_by_status(api: RunningApi) -> None:
    model_id = api.model_id(api.key_a)
    ids = [api.job_id(api.key_a, model_id) for _ in range(7)]
    for job_id in ids[:2]:
        api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth(api.key_a))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = api.client.get("/v1/jobs", headers=api.auth(api.key_a), params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    cancelled = api.client.get(
        "/v1/jobs", headers=api.auth(api.key_a), params={"status": "cancelled"}
    ).json()
    assert [j["id"] for j in cancelled["items"]] == ids[1::-1]
    bad = api.client.get("/v1/jobs", headers=api.auth(api.key_a), params={"cursor": "zzz"})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_cursor")
    too_many = api.client.get("/v1/jobs", headers=api.auth(api.key_a), params={"limit": 201})
    assert too_many.status_code == 422


def test_jobs_are_searched_by_label_data_or_id_prefix(api: RunningApi) -> None:
    model_id = api.model_id(api.key_a)
    wine = api.job_id(api.key_a, model_id, label="Wine baseline", data="builtin://wine")
    digits = api.job_id(api.key_a, model_id, label="digits run")

    def search(q: str) -> list[str]:
        page = api.client.get("/v1/jobs", headers=api.auth(api.key_a), params={"q": q}).json()
        return [j["id"] for j in page["items"]]

    assert search("WINE B") == [wine]
    assert search("builtin://wine") == [wine]
    assert search(digits[:8]) == [digits]
    assert search("%") == []  # LIKE wildcards are matched literally


def test_ten_thousand_jobs_page_completely(api: RunningApi) -> None:
    owner = authenticate(api.sessions, api.key_a)
    assert owner is not None
    model_id = api.model_id(api.key_a)
    spec = {"model_id": model_id, "data": "builtin://digits", "loss": "mse"}
    start = utcnow()
    rows = [
        {"id": f"{i:032x}", "owner_id": owner.id, "model_id": model_id, "spec": spec,
         "status": "succeeded" if i % 10 == 0 else "queued",
         "created_at": start + timedelta(milliseconds=i // 3)}  # ties on created_at
        for i in range(10_000)
    ]  # fmt: skip
    with api.sessions.begin() as session:
        session.execute(insert(Job), rows)
    seen: set[str] = set()
    cursor = None
    while True:
        params = {"limit": 200, "status": "succeeded"} | ({"cursor": cursor} if cursor else {})
        page = api.client.get("/v1/jobs", headers=api.auth(api.key_a), params=params).json()
        seen |= {j["id"] for j in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 1_000
    first = api.client.get("/v1/jobs", headers=api.auth(api.key_a), params={"limit": 200}).json()
    assert first["items"][0]["id"] == f"{9_999:032x}"


def test_another_key_cannot_see_or_touch_a_job(api: RunningApi) -> None:
    job_id = api.job_id(api.key_a)
    b = api.auth(api.key_b)
    for method, path in [("GET", ""), ("GET", "/recommendation"), ("POST", "/cancel"),
                         ("GET", "/events")]:  # fmt: skip
        response = api.client.request(method, f"/v1/jobs/{job_id}{path}", headers=b)
        assert (response.status_code, response.json()["code"]) == (404, "job_not_found"), path
    assert api.client.get("/v1/jobs", headers=b).json()["items"] == []
    assert api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(api.key_a)).status_code == 200


def test_recommendation_is_a_409_until_the_job_succeeds(api: RunningApi) -> None:
    job_id = api.job_id(api.key_a)
    a = api.auth(api.key_a)
    early = api.client.get(f"/v1/jobs/{job_id}/recommendation", headers=a)
    assert (early.status_code, early.json()["code"]) == (409, "job_not_finished")
    assert lifecycle.claim(api.sessions, job_id, "w1", lease=60) is not None
    assert lifecycle.succeed(api.sessions, job_id, "w1", probe_result(), "gn-probe/0.1")
    response = api.client.get(f"/v1/jobs/{job_id}/recommendation", headers=a)
    assert response.status_code == 200, response.text
    rec = response.json()
    assert rec["groups"][0]["lr"] == 0.1
    assert rec["trajectory_losses"] == [2.3, 2.2]  # new diagnostics pass through
    job = api.client.get(f"/v1/jobs/{job_id}", headers=a).json()
    assert (job["status"], job["attempts"]) == ("succeeded", 1)


def test_cancel_stops_queued_jobs_at_once_and_asks_running_ones(api: RunningApi) -> None:
    a = api.auth(api.key_a)
    queued = api.job_id(api.key_a)
    response = api.client.post(f"/v1/jobs/{queued}/cancel", headers=a)
    assert response.json()["status"] == "cancelled"
    assert api.client.post(f"/v1/jobs/{queued}/cancel", headers=a).status_code == 200
    running = api.job_id(api.key_a)
    lifecycle.claim(api.sessions, running, "w1", lease=60)
    asked = api.client.post(f"/v1/jobs/{running}/cancel", headers=a).json()
    assert (asked["status"], asked["cancel_requested"]) == ("running", True)
    lifecycle.fail(api.sessions, running, "w1", "non_finite_loss", "the loss is NaN")
    finished = api.client.post(f"/v1/jobs/{running}/cancel", headers=a)
    assert (finished.status_code, finished.json()["code"]) == (409, "job_finished")
    failed = api.client.get(f"/v1/jobs/{running}", headers=a).json()
    assert failed["error"] == {"code": "non_finite_loss", "detail": "the loss is NaN"}


def _sse(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "event" in fields:
            events.append(fields)
    return events


def test_events_stream_until_the_job_is_final_and_resume_after_last_event_id(
    api: RunningApi,
) -> None:
    job_id = api.job_id(api.key_a)
    lifecycle.claim(api.sessions, job_id, "w1", lease=60)
    lifecycle.heartbeat(api.sessions, job_id, "w1", 60, lifecycle.Progress(4, 16, "summaries"))
    lifecycle.succeed(api.sessions, job_id, "w1", probe_result(), "gn-probe/0.1")
    headers = api.auth(api.key_a) | {"Accept": "text/event-stream"}
    response = api.client.get(f"/v1/jobs/{job_id}/events", headers=headers)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _sse(response.text)
    assert [e["event"] for e in events] == ["status", "status", "progress", "status", "end"]
    assert json.loads(events[2]["data"])["done"] == 4
    assert json.loads(events[-1]["data"]) == {"status": "succeeded"}
    resumed = api.client.get(
        f"/v1/jobs/{job_id}/events", headers=headers | {"Last-Event-ID": events[2]["id"]}
    )
    assert [e["event"] for e in _sse(resumed.text)] == ["status", "end"]


def test_events_polling_fallback_returns_json_after_an_id(api: RunningApi) -> None:
    job_id = api.job_id(api.key_a)
    a = api.auth(api.key_a)
    first = api.client.get(f"/v1/jobs/{job_id}/events", headers=a).json()
    assert ([e["kind"] for e in first["items"]], first["final"]) == (["status"], False)
    api.client.post(f"/v1/jobs/{job_id}/cancel", headers=a)
    after = first["items"][-1]["id"]
    rest = api.client.get(f"/v1/jobs/{job_id}/events", headers=a, params={"after": after}).json()
    assert [e["data"]["status"] for e in rest["items"]] == ["cancelled"]
    assert (rest["status"], rest["final"]) == ("cancelled", True)
