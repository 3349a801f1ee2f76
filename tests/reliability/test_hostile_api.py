"""Hostile input through the HTTP API: the intake's hostile corpus, malformed and oversized
requests, and attacks on authentication, isolation and rate limits. Every refusal is a 4xx
``application/problem+json`` with a stable code; nothing a user sent is executed or stored."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from sqlalchemy import event, func, select

from lrprobe.service.models import DatasetArtifact, Job, ModelArtifact
from tests.service.api_support import RunningApi, start_api
from tests.support.databases import sqlite_copy
from tests.worker.test_checkpoints import HOSTILE

# Where the API's upload check answers with a code of its own rather than the intake's.
API_CODES = {"empty-file": "empty_upload"}
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "code", "errors"}


def _api(template: Path, tmp_path: Path, **overrides: object) -> Iterator[RunningApi]:
    url = sqlite_copy(template, tmp_path / "lrprobe.sqlite")
    (tmp_path / "data").mkdir(exist_ok=True)
    with start_api(url, tmp_path, **overrides) as api:
        yield api


@pytest.fixture
def api(sqlite_template: Path, tmp_path: Path) -> Iterator[RunningApi]:
    yield from _api(sqlite_template, tmp_path)


def problem(
    response: httpx.Response, status: int | tuple[int, ...], code: str | None = None
) -> dict[str, object]:
    """Assert a problem+json answer; ``status``: the status, or those allowed."""
    allowed = status if isinstance(status, tuple) else (status,)
    assert response.status_code in allowed, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body = response.json()
    assert body.keys() >= PROBLEM_KEYS and body["status"] == response.status_code, body
    assert isinstance(body["detail"], str) and body["detail"].endswith((".", ")")), body
    if code is not None:
        assert body["code"] == code, body
    return body


@contextmanager
def _statements(api: RunningApi) -> Iterator[list[str]]:
    """The SQL the app runs meanwhile, the key lookup aside (it depends on the auth cache, not
    on the id asked for)."""
    engine = api.client.app.state.services.engine  # type: ignore[attr-defined]
    found: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "api_keys" not in statement:
            found.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield found
    finally:
        event.remove(engine, "before_cursor_execute", record)


def stored_nothing(api: RunningApi) -> None:
    artifacts = Path(api.settings.resolved_artifact_url)
    files = [p for p in artifacts.rglob("*") if p.is_file()] if artifacts.exists() else []
    assert files == []
    assert list((api.settings.data_dir / "tmp").iterdir()) == []
    with api.sessions() as session:
        for table in (ModelArtifact, DatasetArtifact, Job):
            assert session.scalar(select(func.count()).select_from(table)) == 0
    assert api.queue.sent == []


# --- the intake's hostile corpus ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "build", "code"), HOSTILE, ids=[n for n, _, _ in HOSTILE])
def test_hostile_checkpoint_upload_is_refused_unexecuted_and_unstored(
    api: RunningApi, tmp_path: Path, name: str, build: Callable[[Path, Path], Path], code: str
) -> None:
    marker = tmp_path / "PWNED"
    path = build(tmp_path / "upload.bin", marker)
    response = api.upload_model(api.key_a, path.read_bytes(), filename=f"{name}.bin")
    problem(response, (415, 422), API_CODES.get(name, code))  # 415: not a checkpoint format at all
    assert not marker.exists()
    assert not (tmp_path.parent / "PWNED").exists()
    stored_nothing(api)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('executed')",))


def _object_npz(marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([_Payload(marker)], dtype=object), y=np.array([0]))
    return buffer.getvalue()


def _object_npy(marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Payload(marker)], dtype=object))
    return buffer.getvalue()


def _torch_payload(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(2, 2), "y": _Payload(marker)}, buffer)
    return buffer.getvalue()


HOSTILE_DATASETS: list[tuple[str, Callable[[Path], bytes], str]] = [
    ("evil.npz", _object_npz, "pickle_refused"),
    ("evil.npy", _object_npy, "pickle_refused"),
    ("evil.pt", _torch_payload, "pickle_refused"),
    ("evil.pt", lambda marker: pickle.dumps(_Payload(marker)), "pickle_refused"),
    ("evil.csv", lambda marker: b"\x00\xff" * 100, "unsupported_data_format"),
]


@pytest.mark.parametrize(("filename", "build", "code"), HOSTILE_DATASETS,
                         ids=[f"{n}-{c}" for n, _, c in HOSTILE_DATASETS])  # fmt: skip
def test_hostile_dataset_upload_is_refused_unexecuted_and_unstored(
    api: RunningApi, tmp_path: Path, filename: str, build: Callable[[Path], bytes], code: str
) -> None:
    marker = tmp_path / "PWNED"
    response = api.client.post(
        "/v1/datasets", headers=api.auth(api.key_a), files={"file": (filename, build(marker))}
    )
    problem(response, (415, 422), code)
    assert not marker.exists()
    stored_nothing(api)


def test_hostile_data_references_are_refused_at_submit_and_nothing_is_queued(
    api: RunningApi,
) -> None:
    model = api.model_id(api.key_a)
    root = api.settings.data_roots[0]
    other_dataset = api.client.post(
        "/v1/datasets", headers=api.auth(api.key_b),
        files={"file": ("d.npz", _npz_bytes())},
    ).json()["id"]  # fmt: skip
    corpus = [
        ("file:///etc/passwd", 422, "data_ref_refused"),
        (f"file://{root}/../../etc/passwd", 422, "data_ref_refused"),
        (f"file://{root}/%2e%2e/%2e%2e/etc/passwd", 422, "data_ref_refused"),
        ("file://fileserver/share/d.npz", 422, "invalid_data_ref"),
        ("http://data.example.com/d.npz", 422, "unsupported_data_scheme"),
        ("ftp://data.example.com/d.npz", 422, "unsupported_data_scheme"),
        ("/etc/passwd", 422, "unsupported_data_scheme"),
        ("https://evil.example.net/d.npz", 422, "host_not_allowed"),
        ("https://127.0.0.1/d.npz", 422, "host_not_allowed"),
        ("https://user:pw@data.example.com@evil.example.net/d.npz", 422, None),
        ("builtin://../../etc/passwd", 422, "unknown_builtin_dataset"),
        ("builtin://digits\n", 422, "invalid_data_ref"),
        ("builtin://" + "a" * 5000, 422, None),
        (f"upload://{other_dataset}", 404, "dataset_not_found"),
        ("upload://../../etc/passwd", 404, "dataset_not_found"),
    ]
    for ref, status, code in corpus:
        response = api.submit(api.key_a, model, data=ref)
        body = problem(response, status, code)
        assert body["code"] != "internal_error", ref
    with api.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert api.queue.sent == []


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((8, 4), np.float32), y=np.zeros(8, np.int64))
    return buffer.getvalue()


# --- malformed and oversized requests --------------------------------------------------------


def test_uploads_over_the_cap_are_refused_without_being_read_and_leave_nothing(
    api: RunningApi,
) -> None:
    cap = api.settings.max_upload_bytes
    # declared too large: refused from the header alone
    response = api.upload_model(api.key_a, bytes(cap + (1 << 20)))
    problem(response, 413, "checkpoint_too_large")
    # streamed without a length: refused as soon as it passes the cap
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="m.bin"\r\n\r\n'
        for _ in range(64):
            sent += 1 << 16
            yield bytes(1 << 16)
        yield b"\r\n--b--\r\n"

    response = api.client.post(
        "/v1/datasets",
        headers=api.auth(api.key_a) | {"Content-Type": "multipart/form-data; boundary=b"},
        content=chunks(),
    )
    problem(response, 413, "dataset_too_large")
    stored_nothing(api)


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-da", 422, None),
        ("multipart/form-data; boundary=b", b"garbage without any boundary", 422, None),
        ("multipart/form-data; boundary=b", b"--b\r\n\r\n\r\n--b--\r\n", 422, None),
        ("multipart/form-data", b"--b--\r\n", 415, "unsupported_media_type"),
        ("application/json", b'{"file": "AAAA"}', 415, "unsupported_media_type"),
        ("text/plain", b"hello", 415, "unsupported_media_type"),
        ("application/octet-stream", bytes(100), 415, "unsupported_media_type"),
    ],
    ids=["truncated", "no-boundary", "no-disposition", "boundary-missing", "json", "text", "raw"],
)
def test_malformed_multipart_and_wrong_content_types_are_problems(
    api: RunningApi, content_type: str, body: bytes, status: int, code: str | None
) -> None:
    for path in ("/v1/models", "/v1/datasets"):
        response = api.client.post(
            path, headers=api.auth(api.key_a) | {"Content-Type": content_type}, content=body
        )
        problem(response, status, code)
    stored_nothing(api)


def test_json_bodies_malformed_mistyped_or_oversized_are_problems(api: RunningApi) -> None:
    auth = api.auth(api.key_a)
    model = api.model_id(api.key_a)
    valid = f'{{"model_id": "{model}", "data": "builtin://iris", "loss": "cross_entropy"'
    cases = [
        ({"Content-Type": "application/json"}, b'{"model_id": ', 422),
        ({"Content-Type": "application/json"}, b"\xff\xfe\x00garbage", 422),
        ({"Content-Type": "application/json"}, b"[]", 422),
        ({"Content-Type": "application/json"}, b"null", 422),
        (
            {"Content-Type": "application/json"},
            (valid + ', "deep": ' + "[" * 5000 + "]" * 5000 + "}").encode(),
            400,
        ),
        ({"Content-Type": "text/plain"}, (valid + "}").encode(), 415),
        ({}, (valid + "}").encode(), 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"model_id=x", 415),
        (
            {"Content-Type": "application/json"},
            (valid + ', "label": "' + "x" * (4 << 20) + '"}').encode(),
            413,
        ),
    ]
    answers = [
        (api.client.post("/v1/jobs", headers=auth | headers, content=body), status)
        for headers, body, status in cases
    ]
    assert [r.status_code for r, _ in answers] == [s for _, s in answers], [
        (r.status_code, r.text[:200]) for r, _ in answers
    ]
    for response, status in answers:
        problem(response, status)
    with api.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


# --- authentication, isolation and rate limits -------------------------------------------------


def test_missing_malformed_wrong_and_revoked_keys_are_401_problems(api: RunningApi) -> None:
    for headers in [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": f"Token {api.key_a}"},
        {"Authorization": "Bearer lrp_" + "x" * 43},
        {"Authorization": "Bearer " + "x" * 10_000},
        {"Authorization": f"Bearer {api.key_a}x"},
        {"Authorization": f"Bearer {api.key_a[:-1]}"},
        {"Authorization": "Bearer ' OR 1=1 --"},
    ]:
        for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/keys")]:
            response = api.client.request(method, path, headers=headers)
            problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
    # a revoked key stops working at once
    listed = api.client.get("/v1/keys", headers=api.auth(api.admin)).json()
    key_b = next(k for k in listed if k["name"] == "b")
    assert api.client.get("/v1/jobs", headers=api.auth(api.key_b)).status_code == 200
    revoked = api.client.delete(f"/v1/keys/{key_b['id']}", headers=api.auth(api.admin))
    assert revoked.status_code == 200, revoked.text
    problem(api.client.get("/v1/jobs", headers=api.auth(api.key_b)), 401, "unauthorized")
    # and an ordinary key cannot manage keys
    problem(api.client.get("/v1/keys", headers=api.auth(api.key_a)), 403, "admin_required")


def test_a_key_probing_another_keys_ids_gets_the_same_404_as_for_no_id(api: RunningApi) -> None:
    model = api.model_id(api.key_a)
    job = api.job_id(api.key_a, model)
    dataset = api.client.post(
        "/v1/datasets", headers=api.auth(api.key_a), files={"file": ("d.npz", _npz_bytes())}
    ).json()["id"]
    missing = "0" * 32
    b = api.auth(api.key_b)
    for template, code in [
        ("GET /v1/jobs/{}", "job_not_found"),
        ("GET /v1/jobs/{}/recommendation", "job_not_found"),
        ("GET /v1/jobs/{}/events", "job_not_found"),
        ("POST /v1/jobs/{}/cancel", "job_not_found"),
        ("GET /v1/models/{}", "model_not_found"),
        ("GET /v1/datasets/{}", "dataset_not_found"),
    ]:
        method, path = template.split(" ")
        real_id = {"job": job, "mod": model, "dat": dataset}[path.split("/")[2][:3]]
        with _statements(api) as theirs_work:
            theirs = problem(api.client.request(method, path.format(real_id), headers=b), 404, code)
        with _statements(api) as nobody_work:
            nobody = problem(api.client.request(method, path.format(missing), headers=b), 404, code)
        # the server does the same work for both (the same queries, so the same time: no
        # timing tells B that the id exists), and the answers differ only by the id they echo
        assert theirs_work == nobody_work and theirs_work, (template, theirs_work, nobody_work)
        assert str(theirs["detail"]).replace(real_id, "ID") == str(nobody["detail"]).replace(
            missing, "ID"
        )
    # B's job submitted with A's model: the model is not B's
    problem(api.submit(api.key_b, model), 404, "model_not_found")
    # lists show only one's own jobs and carry no total count
    page = api.client.get("/v1/jobs", headers=b).json()
    assert page["items"] == [] and set(page) == {"items", "next_cursor"}
    for status in ("queued", "running", "succeeded"):
        assert api.client.get(f"/v1/jobs?status={status}", headers=b).json()["items"] == []
    # A's job is still queued: B's cancel did nothing
    assert api.client.get(f"/v1/jobs/{job}", headers=api.auth(api.key_a)).json()["status"] == (
        "queued"
    )


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(
    sqlite_template: Path, tmp_path: Path
) -> None:
    for api in _api(sqlite_template, tmp_path, rate_limit_per_minute=5):
        for _ in range(5):
            assert api.client.get("/v1/jobs", headers=api.auth(api.key_a)).status_code == 200
        response = api.client.get("/v1/jobs", headers=api.auth(api.key_a))
        body = problem(response, 429, "rate_limited")
        retry_after = int(response.headers["retry-after"])
        assert 1 <= retry_after <= 60 and f"{retry_after} s" in str(body["detail"])
        # other keys keep their own budget; unauthenticated requests do not spend it
        assert api.client.get("/v1/jobs", headers=api.auth(api.key_b)).status_code == 200
        problem(api.client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}), 401)
        problem(api.client.post("/v1/jobs", headers=api.auth(api.key_a), json={}), 429)
