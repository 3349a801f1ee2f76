"""A mutation fuzzer over what clients send: safetensors headers, zip and tar archives,
``torch.save`` pickles, datasets and JSON job specs, built by Hypothesis from valid seeds and
then broken (flipped bytes, truncation, inserted bytes, hostile header fields).

Every answer must be below 500, every refusal a problem+json; a refused upload must leave no
temporary file, artifact or row; and the process's peak memory must stay bounded. ``make test``
runs a fixed, derandomised budget (``LRPROBE_FUZZ_EXAMPLES``, default 25 per target); ``make
fuzz`` runs 1000 random examples per target.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from lrprobe.service import migrate
from lrprobe.service.models import DatasetArtifact, Job, ModelArtifact
from tests.service.api_support import RunningApi, safetensors_mlp, start_api

EXAMPLES = int(os.environ.get("LRPROBE_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="LRPROBE_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
PEAK_BUDGET = 512 * 2**20  # the upload cap is 1 MiB: no input may cost the process this much


@pytest.fixture(scope="module")
def fuzz_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{data_dir / 'lrprobe.sqlite'}"
    migrate.upgrade(url)
    (data_dir / "data").mkdir()
    with start_api(url, data_dir) as api:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        yield api
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        assert grew < PEAK_BUDGET, f"peak memory grew by {grew / 2**20:.0f} MiB while fuzzing"


# --- seeds: valid files of every format --------------------------------------------------


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((8, 4), np.float32), y=np.zeros(8, np.int64))
    return buffer.getvalue()


_HF = {"m/config.json": b'{"model_type": "gpt2", "n_layer": 1}', "m/model.safetensors": b""}
CHECKPOINT_SEEDS = [
    safetensors_mlp(),
    _torch_bytes({"layers.0.weight": torch.zeros(8, 4), "layers.0.bias": torch.zeros(8)}),
    _zip(_HF | {"m/model.safetensors": safetensors_mlp()}, zipfile.ZIP_DEFLATED),
    _tar(_HF | {"m/model.safetensors": safetensors_mlp()}),
    _tar(_HF | {"m/model.safetensors": safetensors_mlp()}, "w"),
]
DATASET_SEEDS = [
    (_npz(), "d.npz"),
    (_torch_bytes({"x": torch.zeros(4, 2), "y": torch.zeros(4)}), "d.pt"),
    (b"a,b,target\n1,2,0\n3,4,1\n", "d.csv"),
    (np.arange(64, dtype=np.uint16).tobytes(), "d.bin"),
]


# --- mutations ----------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
    return bytes(data)


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    """A safetensors file whose header entries are drawn, sane or hostile."""
    header: dict[str, Any] = {}
    offset = 0
    for i in range(draw(st.integers(0, 5))):
        shape = draw(
            st.lists(st.integers(0, 4), max_size=3)
            | st.lists(JSON_SCALARS | st.just(10**30), max_size=3)
        )
        dtype = draw(st.sampled_from(["F32", "F16", "I64", "BOOL", "F4", "XX"]) | JSON_SCALARS)
        size = 4 * int(np.prod([d for d in shape if isinstance(d, int) and 0 <= d < 10])) if (
            isinstance(shape, list)
        ) else 0  # fmt: skip
        offsets = draw(
            st.just([offset, offset + size])
            | st.lists(JSON_SCALARS, min_size=0, max_size=3)
            | st.just(["a", "b"])
        )
        header[draw(st.text(max_size=12)) or f"t{i}"] = {
            "dtype": dtype, "shape": shape, "data_offsets": offsets,
        }  # fmt: skip
        offset += size
    metadata = draw(
        st.none()
        | st.just({"lrprobe.arch": "mlp"})
        | st.dictionaries(
            st.sampled_from(["lrprobe.arch", "lrprobe.arch_config", "x"]),
            JSON_VALUES | st.just(json.dumps(_deep(100))) | st.just(_deep(60)),
            max_size=2,
        )
    )
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header, allow_nan=True).encode()
    declared = draw(st.just(len(raw)) | st.integers(0, 2**64 - 1))
    payload = bytes(draw(st.just(offset) | st.integers(0, 4096)))
    return struct.pack("<Q", declared) + raw + payload


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    """A zip or tar with drawn member names and contents."""
    names = draw(
        st.lists(
            st.sampled_from(["m/config.json", "m/model.safetensors", "archive/data.pkl",
                             "../x", "/abs", "a\\b", "m/code/x.py", "archive/constants.pkl",
                             "m/pytorch_model.bin"]) | st.text(min_size=1, max_size=10),
            max_size=5,
        )
    )  # fmt: skip
    members = {
        name: draw(
            st.sampled_from([b"{}", json.dumps(_deep(200)).encode(), safetensors_mlp(), b""])
            | st.binary(max_size=64)
        )
        for name in names
    }
    kind = draw(st.sampled_from(["zip", "zip-deflated", "tar", "tar.gz"]))
    if kind.startswith("zip"):
        compression = zipfile.ZIP_DEFLATED if kind == "zip-deflated" else zipfile.ZIP_STORED
        return _zip(members, compression)
    return _tar(members, "w:gz" if kind == "tar.gz" else "w")


def _checkpoints() -> st.SearchStrategy[bytes]:
    seeds = st.sampled_from(CHECKPOINT_SEEDS).flatmap(mutated)
    return seeds | safetensors_files() | archives() | archives().flatmap(mutated)


# --- checks -------------------------------------------------------------------------------


def _stored(api: RunningApi) -> tuple[int, int]:
    artifacts = Path(api.settings.resolved_artifact_url)
    files = sum(1 for p in artifacts.rglob("*") if p.is_file()) if artifacts.exists() else 0
    with api.sessions() as session:
        rows = sum(
            session.scalar(select(func.count()).select_from(table)) or 0
            for table in (ModelArtifact, DatasetArtifact, Job)
        )
    return files, rows


def _check(api: RunningApi, response: Any, before: tuple[int, int]) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json", response.headers
        assert response.json()["code"] != "internal_error"
        assert _stored(api) == before, "a refused request left a file or a row"
    assert list((api.settings.data_dir / "tmp").iterdir()) == [], "a temporary file was left"


@FUZZ
@given(
    content=_checkpoints(),
    fields=st.fixed_dictionaries(
        {},
        optional={
            "arch": st.sampled_from(["mlp", "", "gpt", "x" * 200, "ml\x00p"]),
            "arch_config": st.sampled_from(["{}", "[]", "{bad", '{"a": NaN}'])
            | JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True)),
        },
    ),
)
def test_fuzzed_checkpoint_uploads_never_fail_the_server(
    fuzz_api: RunningApi, content: bytes, fields: dict[str, str]
) -> None:
    before = _stored(fuzz_api)
    response = fuzz_api.upload_model(fuzz_api.key_a, content, **fields)
    _check(fuzz_api, response, before)


@FUZZ
@given(seed=st.sampled_from(DATASET_SEEDS), data=st.data())
def test_fuzzed_dataset_uploads_never_fail_the_server(
    fuzz_api: RunningApi, seed: tuple[bytes, str], data: st.DataObject
) -> None:
    content = data.draw(mutated(seed[0]) | archives())
    before = _stored(fuzz_api)
    response = fuzz_api.client.post(
        "/v1/datasets",
        headers=fuzz_api.auth(fuzz_api.key_a),
        files={"file": (seed[1], content)},
    )
    _check(fuzz_api, response, before)


def _multipart_body() -> bytes:
    return (
        b'--x\r\nContent-Disposition: form-data; name="arch"\r\n\r\nmlp\r\n'
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="m.safetensors"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + safetensors_mlp() + b"\r\n--x--\r\n"
    )


@FUZZ
@given(body=mutated(_multipart_body()), path=st.sampled_from(["/v1/models", "/v1/datasets"]))
def test_fuzzed_multipart_framing_never_fails_the_server(
    fuzz_api: RunningApi, body: bytes, path: str
) -> None:
    before = _stored(fuzz_api)
    response = fuzz_api.client.post(
        path,
        headers=fuzz_api.auth(fuzz_api.key_a) | {"Content-Type": "multipart/form-data; boundary=x"},
        content=body,
    )
    _check(fuzz_api, response, before)


VALID_SPEC: dict[str, Any] = {
    "data": "builtin://digits",
    "loss": "cross_entropy",
    "optimizer": {"name": "adamw", "weight_decay": 0.01},
    "partition": {"rule": {"^layers\\.0": "first"}},
    "budget": {"batches": 8, "batch_size": 32},
    "seed": 1,
    "label": "fuzz",
}


@st.composite
def job_bodies(draw: st.DrawFn) -> bytes:
    spec: dict[str, Any] = json.loads(json.dumps(VALID_SPEC))
    for _ in range(draw(st.integers(0, 4))):
        path = draw(st.sampled_from([("data",), ("loss",), ("optimizer",), ("optimizer", "eps"),
                                     ("optimizer", "betas"), ("partition",), ("budget", "batches"),
                                     ("budget", "time_limit_s"), ("seed",), ("label",),
                                     ("block_size",), ("device",), ("model_id",)]))  # fmt: skip
        target = spec
        for part in path[:-1]:
            target = target.setdefault(part, {}) if isinstance(target.get(part), dict) else {}
        target[path[-1]] = draw(JSON_VALUES | st.just(_deep(40)))
    raw = json.dumps(spec, allow_nan=True).encode()
    return draw(st.just(raw) | mutated(raw))


@FUZZ
@given(body=job_bodies())
def test_fuzzed_job_specs_never_fail_the_server(fuzz_api: RunningApi, body: bytes) -> None:
    with fuzz_api.sessions() as session:
        model = session.scalar(select(ModelArtifact.id).limit(1))
    if model is None:
        model = fuzz_api.model_id(fuzz_api.key_a)
    body = body.replace(b'"data"', f'"model_id": "{model}", "data"'.encode(), 1)
    response = fuzz_api.client.post(
        "/v1/jobs",
        headers=fuzz_api.auth(fuzz_api.key_a) | {"Content-Type": "application/json"},
        content=body,
    )
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"
