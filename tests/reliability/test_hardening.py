"""Issue 16, API side: what a hostile or careless client could still do. Each test is one
finding of the issue; every refusal is a 4xx problem+json and leaves nothing stored."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save as save_safetensors
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from lrprobe.rules.checkpoint_inspection import (
    MAX_SAFETENSORS_ENTRIES,
    MAX_SAFETENSORS_HEADER,
    MAX_SUMMARY_GROUPS,
)
from lrprobe.service import lifecycle
from lrprobe.service.auth_throttle import FailedAuthThrottle
from lrprobe.service.dashboard.session import SESSION_COOKIE
from lrprobe.service.models import ApiKey, Job, ModelArtifact
from tests.reliability.test_hostile_api import _api, problem, stored_nothing
from tests.service.api_support import RunningApi, safetensors_mlp
from tests.service.test_dashboard import _token, sign_in


@pytest.fixture
def api(sqlite_template: Path, tmp_path: Path) -> Iterator[RunningApi]:
    yield from _api(sqlite_template, tmp_path)


def _multipart(size: int) -> bytes:
    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n\r\n'
    return head + bytes(size) + b"\r\n--x--\r\n"


# --- finding 1: bodies bounded before anything else ----------------------------------------


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/keys", "/v1/jobs/x/cancel", "/ui/sign-in"])
def test_a_large_multipart_body_to_a_non_upload_route_is_413_before_auth(
    api: RunningApi, path: str
) -> None:
    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    # declared: refused from Content-Length, without a key
    problem(api.client.post(path, headers=headers, content=_multipart(2 << 20)), 413,
            "request_too_large")  # fmt: skip

    # streamed without a length: refused once it passes the cap
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield bytes(64 << 10)

    response = api.client.post(path, headers=headers, content=chunks())
    problem(response, 413, "request_too_large")
    assert list((api.settings.data_dir / "tmp").iterdir()) == []


def test_multipart_is_parsed_only_on_upload_routes(api: RunningApi) -> None:
    small = _multipart(10)
    headers = api.auth(api.key_a) | {"Content-Type": "multipart/form-data; boundary=x"}
    problem(api.client.post("/v1/jobs", headers=headers, content=small), 415,
            "unsupported_media_type")  # fmt: skip
    csrf = sign_in(api, api.key_a)
    for path in ("/ui/jobs", "/ui/sign-out"):
        response = api.client.post(
            path,
            headers={"Content-Type": "multipart/form-data; boundary=x"},
            content=small.replace(b"--x--", f"--x\r\nContent-Disposition: form-data; "
                                  f'name="csrf"\r\n\r\n{csrf}\r\n--x--'.encode()),
        )  # fmt: skip
        problem(response, 415, "unsupported_media_type")


def test_sign_in_takes_only_a_small_urlencoded_form(api: RunningApi) -> None:
    page = api.client.get("/ui/sign-in")
    csrf = _token(page.text)
    big = {"api_key": "x" * (16 << 10), "csrf": csrf}
    problem(api.client.post("/ui/sign-in", data=big), 413, "request_too_large")
    problem(
        api.client.post("/ui/sign-in", files={"api_key": ("k", b"lrp_x")}, data={"csrf": csrf}),
        415,
        "unsupported_media_type",
    )
    problem(api.client.post("/ui/sign-in", json={"api_key": api.key_a}), 415)
    assert list((api.settings.data_dir / "tmp").iterdir()) == []


# --- finding 3: bounded inspection ---------------------------------------------------------


def _raw_safetensors(header: dict[str, object], payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def _entries(count: int) -> dict[str, object]:
    return {
        f"layers.{i}.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
        for i in range(count)
    }


def test_safetensors_headers_over_the_size_or_entry_limit_are_refused(
    sqlite_template: Path, tmp_path: Path
) -> None:
    many = _entries(MAX_SAFETENSORS_ENTRIES + 1)
    body = _raw_safetensors(many, bytes(4 * (MAX_SAFETENSORS_ENTRIES + 1)))
    huge = struct.pack("<Q", MAX_SAFETENSORS_HEADER + 1) + b"{" + b" " * MAX_SAFETENSORS_HEADER
    for api in _api(sqlite_template, tmp_path, max_upload_bytes=16 << 20):
        for content in (body, huge):
            response = api.upload_model(api.key_a, content, arch="mlp")
            detail = str(problem(response, 415, "unsupported_checkpoint")["detail"])
            assert "limit" in detail or "more than" in detail, detail
        stored_nothing(api)


def test_the_model_row_keeps_a_bounded_summary_not_the_whole_header(api: RunningApi) -> None:
    count = MAX_SUMMARY_GROUPS + 100
    tensors = {f"block{i}.weight": np.zeros(1, np.float32) for i in range(count)}
    content = save_safetensors(tensors, metadata={"lrprobe.arch": "mlp"})
    response = api.upload_model(api.key_a, content)
    assert response.status_code == 201, response.text
    model = response.json()
    assert len(model["groups"]) == MAX_SUMMARY_GROUPS
    assert model["num_params"] == count


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _tar_bomb() -> bytes:
    # a 64 MiB member of zeros compresses ~1000-fold: far past any model's expansion
    return _tar_gz({"m/config.json": b"{}", "m/model.safetensors": bytes(64 << 20)})


def _tar_duplicates() -> bytes:
    return _tar_with([("m/config.json", b"{}"), ("m/config.json", b"{}"), ("m/w.safetensors", b"")])


def _tar_with(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _pax_bomb() -> bytes:
    """A pax header declaring 300 MB of zeros: tarfile would read it whole into memory."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 300 * 10**6
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as gz:
        gz.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        block = bytes(1 << 20)
        for _ in range(info.size // len(block) + 1):
            gz.write(block)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("build", "status", "code"),
    [
        (_tar_bomb, 422, "unsafe_archive"),
        (_pax_bomb, 422, "unsafe_archive"),
        (_tar_duplicates, 422, "unsafe_archive"),
        (lambda: _tar_with([(f"m/{i}", b"") for i in range(10_001)]), 422, "unsafe_archive"),
        (lambda: _tar_with([("../evil/config.json", b"{}")]), 422, "unsafe_archive"),
    ],
    ids=["expands-1000x", "pax-header-bomb", "duplicate-member", "10001-members", "dotdot"],
)
def test_tar_archives_get_the_zip_checks_at_upload(
    api: RunningApi, build: object, status: int, code: str
) -> None:
    content = build()  # type: ignore[operator]
    problem(api.upload_model(api.key_a, content, filename="m.tar.gz"), status, code)
    stored_nothing(api)


@pytest.mark.parametrize("build", [_tar_bomb, _pax_bomb, _tar_duplicates], ids=["expands",
                         "pax-header-bomb", "duplicate-member"])  # fmt: skip
def test_tar_archives_get_the_zip_checks_in_the_worker(tmp_path: Path, build: object) -> None:
    from lrprobe.rules import RuleError
    from lrprobe.rules.archives import extract_members

    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(build())  # type: ignore[operator]
    with pytest.raises(RuleError) as caught:
        extract_members(archive, tmp_path / "out", max_bytes=1 << 30, select=set)
    assert caught.value.code == "unsafe_archive", caught.value
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def _nested(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


def _hf_zip(config: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("m/config.json", config)
        zf.writestr("m/model.safetensors", safetensors_mlp())
    return buffer.getvalue()


def _torch_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2, 2)}, buffer)
    return buffer.getvalue()


def _member_data_offset(data: bytes, info: zipfile.ZipInfo) -> int:
    # from the local header: torch pads its extra field, so the central one differs
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    return info.header_offset + 30 + name_len + extra_len


def _bad_crc() -> bytes:
    data = bytearray(_torch_zip())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    data[_member_data_offset(data, info) + 5] ^= 0xFF  # the bytes change, the stored CRC not
    return bytes(data)


def _corrupt_deflate() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 200)
    data = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("archive/data.pkl")
    start = _member_data_offset(data, info)
    data[start : start + 8] = b"\xff" * 8
    return bytes(data)


def _header(**entry: object) -> bytes:
    base = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    meta = {"__metadata__": {"lrprobe.arch": "mlp"}}
    return _raw_safetensors({"w": base | entry} | meta, bytes(4))


def _raw_text_header(text: str, payload: bytes = bytes(4)) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + payload


# --- finding 7: every parser failure is a 4xx, and nothing is left behind ------------------

FINDING_7 = [
    ("pt-bad-crc", _bad_crc, {"arch": "mlp"}),
    ("pt-corrupt-deflate", _corrupt_deflate, {"arch": "mlp"}),
    ("config-json-nested", lambda: _hf_zip(_nested(100_000)), {}),
    (
        "metadata-nested",
        lambda: _raw_text_header(
            '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": '
            + _nested(100_000)
            + "}"
        ),
        {},
    ),
    (
        "arch-config-nested",
        lambda: save_safetensors(
            {"w": np.zeros(1, np.float32)},
            metadata={"lrprobe.arch": "mlp", "lrprobe.arch_config": _nested(5000)},
        ),
        {},
    ),
    ("offsets-strings", lambda: _header(data_offsets=["a", "b"]), {}),
    (
        "offsets-1e400",
        lambda: _raw_text_header(
            '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e400]}, '
            '"__metadata__": {"lrprobe.arch": "mlp"}}'
        ),
        {},
    ),
    ("shape-1e30-float", lambda: _header(shape=[1e30, 1e30]), {}),
    ("shape-1e30-int", lambda: _header(shape=[10**30, 10**30]), {}),
    (
        "arch-object",
        lambda: _raw_safetensors(
            {
                "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "__metadata__": {"lrprobe.arch": {"x": 1}},
            },
            bytes(4),
        ),
        {},
    ),
    ("arch-form-nul", lambda: safetensors_mlp(metadata=False), {"arch": "ml\x00p"}),
    (
        "arch-config-infinity",
        lambda: safetensors_mlp(metadata=False),
        {"arch": "mlp", "arch_config": '{"hidden": Infinity}'},
    ),
]


@pytest.mark.parametrize(("name", "build", "fields"), FINDING_7, ids=[c[0] for c in FINDING_7])
def test_corrupt_or_hostile_checkpoints_are_4xx_and_store_nothing(
    api: RunningApi, name: str, build: object, fields: dict[str, str]
) -> None:
    content = build()  # type: ignore[operator]
    response = api.upload_model(api.key_a, content, **fields)
    body = problem(response, (415, 422))
    assert body["code"] != "internal_error", body
    stored_nothing(api)


def test_a_row_that_cannot_be_written_takes_its_new_artifact_with_it(
    api: RunningApi, tmp_path: Path
) -> None:
    from lrprobe.service import uploads
    from lrprobe.service.artifacts import ArtifactStore
    from lrprobe.service.keys import Principal
    from lrprobe.service.upload_stream import ReceivedFile

    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_mlp())
    upload = ReceivedFile(path, "m.safetensors", path.stat().st_size, "ab" * 32)
    store = ArtifactStore(api.settings.resolved_artifact_url)
    ghost = Principal(id="no-such-key", admin=False)  # the foreign key refuses the row
    with pytest.raises(IntegrityError):
        uploads.register_model(
            api.sessions, store, ghost, upload, arch=None, arch_config=None, allow_pt2=False
        )
    assert not store.exists(upload.sha256)
    stored_nothing(api)


def test_corrupt_dataset_archives_are_4xx(api: RunningApi) -> None:
    for content in (_bad_crc(), _corrupt_deflate()):
        response = api.client.post(
            "/v1/datasets", headers=api.auth(api.key_a), files={"file": ("d.pt", content)}
        )
        problem(response, (415, 422))
    stored_nothing(api)


def test_event_cursors_beyond_64_bits_are_4xx(api: RunningApi) -> None:
    job = api.job_id(api.key_a)
    auth = api.auth(api.key_a)
    problem(api.client.get(f"/v1/jobs/{job}/events?after=18446744073709551616", headers=auth),
            422, "validation_error")  # fmt: skip
    sse = auth | {"Accept": "text/event-stream"}
    for last in ("18446744073709551616", "9" * 5000):
        response = api.client.get(f"/v1/jobs/{job}/events", headers=sse | {"Last-Event-ID": last})
        problem(response, 422)


# --- item 7: strict types ------------------------------------------------------------------


def test_security_relevant_fields_are_not_coerced(api: RunningApi) -> None:
    admin = api.auth(api.admin)
    for body in ({"name": "x", "admin": "yes"}, {"name": "x", "admin": 1},
                 {"name": "x\x00y"}, {"name": "line\nbreak"}):  # fmt: skip
        problem(api.client.post("/v1/keys", headers=admin, json=body), 422, "validation_error")
    with api.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 3
    model = api.model_id(api.key_a)
    for spec in (
        {"budget": {"batches": True}},
        {"budget": {"batches": "8"}},
        {"budget": {"batch_size": 8.0}},
        {"optimizer": {"name": "sgd", "nesterov": "true"}},
        {"optimizer": {"name": "adam", "options": {"amsgrad": "yes"}}},
        {"optimizer": {"name": "adamw", "betas": ["0.9", "0.99"]}},
        {"run": "r1", "run_step": True},
        {"label": "a\x00b"},
        {"partition": {"rule": {"^layers": "g\x00"}}},
    ):
        problem(api.submit(api.key_a, model, **spec), 422, "validation_error")
    base = f'{{"model_id": "{model}", "data": "builtin://digits", "loss": "cross_entropy", '
    bad_optimizers = (
        '{"name": "adamw", "weight_decay": Infinity}',
        '{"name": "adam", "eps": 1e400}',
        '{"name": "sgd", "weight_decay": NaN}',
    )
    for optimizer in bad_optimizers:
        response = api.client.post(
            "/v1/jobs",
            headers=api.auth(api.key_a) | {"Content-Type": "application/json"},
            content=(base + f'"optimizer": {optimizer}}}').encode(),
        )
        problem(response, 422, "validation_error")
    with api.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_nul_bytes_never_reach_a_stored_file_name(api: RunningApi) -> None:
    body = (
        b'--x\r\nContent-Disposition: form-data; name="file"; '
        b'filename="evil\x00name\x01.safetensors"\r\n\r\n' + safetensors_mlp() + b"\r\n--x--\r\n"
    )
    headers = api.auth(api.key_a) | {"Content-Type": "multipart/form-data; boundary=x"}
    response = api.client.post("/v1/models", headers=headers, content=body)
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "evilname.safetensors"
    with api.sessions() as session:
        assert session.scalar(select(ModelArtifact.filename)) == "evilname.safetensors"


def test_api_answers_are_not_cached_or_sniffed_and_https_gets_hsts(api: RunningApi) -> None:
    created = api.client.post("/v1/keys", headers=api.auth(api.admin), json={"name": "ci"})
    assert created.status_code == 201
    for response in (
        created,
        api.client.get("/v1/jobs", headers=api.auth(api.key_a)),
        api.client.get("/v1/jobs"),  # a 401 problem too
        api.client.post("/v1/jobs", content=bytes(2 << 20)),  # and a refusal by the middleware
    ):
        assert response.headers["cache-control"] == "no-store", response.headers
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "strict-transport-security" not in response.headers
    secure = api.client.get("https://testserver/healthz")
    assert secure.headers["strict-transport-security"].startswith("max-age=")


def test_swagger_ui_is_served_locally_under_a_csp(api: RunningApi) -> None:
    page = api.client.get("/docs")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "cdn" not in page.text and "https://" not in page.text and "<script>" not in page.text
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-init.js"):
        assert f"/docs/assets/{asset}" in page.text
        response = api.client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 100
    problem(api.client.get("/docs/assets/..%2f..%2fsettings.py"), 404)
    assert api.client.get("/redoc").status_code == 404


@pytest.mark.parametrize("access", ["admin", "open", "off"])
def test_metrics_follow_their_setting(sqlite_template: Path, tmp_path: Path, access: str) -> None:
    for api in _api(sqlite_template, tmp_path, metrics_access=access):
        anonymous = api.client.get("/metrics")
        user = api.client.get("/metrics", headers=api.auth(api.key_a))
        admin = api.client.get("/metrics", headers=api.auth(api.admin))
        if access == "admin":
            problem(anonymous, 401, "unauthorized")
            problem(user, 403, "admin_required")
            assert admin.status_code == 200 and "lrprobe_http_requests" in admin.text
        elif access == "open":
            assert anonymous.status_code == 200 and "lrprobe_http_requests" in anonymous.text
        else:
            for response in (anonymous, user, admin):
                problem(response, 404)


def test_job_events_do_not_show_the_workers_host_or_pid(api: RunningApi) -> None:
    job = api.job_id(api.key_a)
    assert lifecycle.claim(api.sessions, job, "gpu-host-7:4242", 60) is not None
    events = api.client.get(f"/v1/jobs/{job}/events", headers=api.auth(api.key_a)).json()
    assert events["items"], events
    assert "gpu-host-7" not in json.dumps(events) and "4242" not in json.dumps(events)


# --- finding 4: sessions that end, and throttled guessing ----------------------------------


def test_sign_out_ends_the_session_even_for_a_copied_cookie(api: RunningApi) -> None:
    csrf = sign_in(api, api.key_a)
    copied = api.client.cookies.get(SESSION_COOKIE, path="/ui")
    assert copied
    response = api.client.post("/ui/sign-out", data={"csrf": csrf}, follow_redirects=False)
    assert response.status_code == 303
    api.client.cookies.clear()
    api.client.cookies.set(SESSION_COOKIE, copied, path="/ui")
    replay = api.client.get("/ui/jobs", follow_redirects=False)
    assert replay.status_code == 303 and "/ui/sign-in" in replay.headers["location"]
    # another session of the same key lives on
    sign_in(api, api.key_a)
    assert api.client.get("/ui/jobs", follow_redirects=False).status_code == 200


def test_failed_sign_ins_and_unknown_keys_are_throttled_per_address(
    sqlite_template: Path, tmp_path: Path
) -> None:
    for api in _api(sqlite_template, tmp_path, sign_in_failures_per_minute=3):
        for _ in range(3):
            problem(api.client.get("/v1/jobs", headers=api.auth("lrp_guess")), 401)
        response = api.client.get("/v1/jobs", headers=api.auth("lrp_guess"))
        problem(response, 429, "rate_limited")
        assert 1 <= int(response.headers["retry-after"]) <= 60
        # the address is throttled before its key is looked up, right keys included
        problem(api.client.get("/v1/jobs", headers=api.auth(api.key_a)), 429)
        page = api.client.get("/ui/sign-in")
        answer = api.client.post(
            "/ui/sign-in", data={"api_key": api.key_a, "csrf": _token(page.text)}
        )
        assert answer.status_code == 429 and answer.headers["retry-after"]


def test_the_throttle_is_per_address_and_refills() -> None:
    now = [0.0]
    throttle = FailedAuthThrottle(2, clock=lambda: now[0], max_addresses=3)
    for _ in range(2):
        assert throttle.wait_now("10.0.0.1") is None
        throttle.failed_now("10.0.0.1")
    assert throttle.wait_now("10.0.0.1") == 30
    assert throttle.wait_now("10.0.0.2") is None
    now[0] = 30.0
    assert throttle.wait_now("10.0.0.1") is None
    for address in ("a", "b", "c", "d"):  # a full table drops refilled buckets, then the oldest
        throttle.failed_now(address)
    assert len(throttle._buckets) <= 3


def test_dashboard_forms_still_submit_numbers_under_strict_types(api: RunningApi) -> None:
    csrf = sign_in(api, api.key_a)
    model = api.model_id(api.key_a)
    form = {
        "csrf": csrf, "model_id": model, "data": "builtin://digits", "loss": "cross_entropy",
        "optimizer.name": "momentum", "optimizer.momentum": "0.8", "budget.batches": "8",
        "budget.batch_size": "32", "budget.time_limit_s": "60", "seed": "3",
        "partition.rule": "layer", "idempotency_key": "form-1",
    }  # fmt: skip
    response = api.client.post("/ui/jobs", data=form, follow_redirects=False)
    assert response.status_code == 303, response.text
    with api.sessions() as session:
        spec = session.scalar(select(Job.spec))
    assert spec is not None
    assert spec["budget"]["batches"] == 8 and spec["optimizer"]["momentum"] == 0.8
    assert spec["seed"] == 3
