"""Uploading checkpoints and datasets: accepted formats are recorded, refused ones leave
nothing behind (no artifact, no row), and nothing from the file is ever executed."""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import tarfile
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from lrprobe.rules.pickle_scan import pickle_globals
from lrprobe.service.keys import authenticate
from lrprobe.service.models import DatasetArtifact, ModelArtifact
from tests.service.api_support import MLP_CONFIG, RunningApi, safetensors_mlp, zip_archive


class _CreatesFile:
    """Unpickling this creates a file: the marker that proves code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (str(self.path), "w"))


def _stored_nothing(api: RunningApi) -> bool:
    artifacts = Path(api.settings.resolved_artifact_url)
    files = [p for p in artifacts.rglob("*") if p.is_file()] if artifacts.exists() else []
    owner = authenticate(api.sessions, api.key_a)
    assert owner is not None
    with api.sessions() as session:  # the PostgreSQL database is shared by the module's tests
        rows = session.scalar(select(func.count()).where(ModelArtifact.owner_id == owner.id))
        rows += session.scalar(select(func.count()).where(DatasetArtifact.owner_id == owner.id))
    leftovers = list((api.settings.data_dir / "tmp").iterdir())
    return not files and rows == 0 and not leftovers


def test_safetensors_upload_reads_the_header_and_stores_content_addressed(
    api: RunningApi,
) -> None:
    content = safetensors_mlp()
    response = api.upload_model(api.key_a, content)
    assert response.status_code == 201, response.text
    model = response.json()
    assert (model["format"], model["arch"], model["arch_config"]) == (
        "safetensors", "mlp", MLP_CONFIG
    )  # fmt: skip
    assert model["num_params"] == 8 * 4 + 8 + 3 * 8 + 3
    assert model["groups"] == {
        "layers.0": ["layers.0.bias", "layers.0.weight"],
        "layers.2": ["layers.2.bias", "layers.2.weight"],
    }
    sha = model["sha256"]
    stored = Path(api.settings.resolved_artifact_url) / "sha256" / sha[:2] / sha
    assert stored.read_bytes() == content
    got = api.client.get(f"/v1/models/{model['id']}", headers=api.auth(api.key_a))
    assert got.json() == model


def test_form_fields_name_the_architecture_of_a_bare_state_dict(api: RunningApi) -> None:
    bare = safetensors_mlp(metadata=False)
    refused = api.upload_model(api.key_a, bare)
    assert (refused.status_code, refused.json()["code"]) == (422, "arch_required")
    response = api.upload_model(api.key_a, bare, arch="mlp", arch_config=json.dumps(MLP_CONFIG))
    assert response.status_code == 201, response.text
    assert response.json()["arch_config"] == MLP_CONFIG
    bad = api.upload_model(api.key_a, bare, arch="mlp", arch_config="[1, 2]")
    assert bad.json()["code"] == "invalid_arch_config"


def test_another_keys_model_is_not_found(api: RunningApi) -> None:
    model_id = api.model_id(api.key_a)
    response = api.client.get(f"/v1/models/{model_id}", headers=api.auth(api.key_b))
    assert response.status_code == 404
    assert response.json()["code"] == "model_not_found"


def test_pickles_are_refused_unopened_and_nothing_is_stored(
    api: RunningApi, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesFile(marker), protocol=2)
    torch_save_of_a_module = zip_archive(
        {"archive/data.pkl": payload, "archive/version": b"3\n", "archive/data/0": b"\0" * 16}
    )
    for content, name in [(payload, "model.pkl"), (torch_save_of_a_module, "model.pt")]:
        response = api.upload_model(api.key_a, content, filename=name, arch="mlp")
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["code"] == "pickle_refused"
        assert "safetensors" in problem["detail"]  # says what to send instead
    assert not marker.exists()
    assert _stored_nothing(api)


def test_torchscript_and_unknown_files_are_refused_with_their_codes(api: RunningApi) -> None:
    torchscript = zip_archive(
        {"model/code/__torch__.py": b"def forward(self): ...", "model/constants.pkl": b"\x80\x02N."}
    )
    cases = [
        (torchscript, "model.pt", 422, "torchscript_refused"),
        (b"GIF89a not a model", "model.bin", 415, "unsupported_checkpoint"),
        (b"", "empty.safetensors", 422, "empty_upload"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "t.safetensors", 415,
         "unsupported_checkpoint"),
        # a safetensors header without tensors: the rulebook's (and the worker's) refusal
        (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "e.safetensors", 415, "unsupported_checkpoint"),
        (zip_archive({"archive/archive_format": b"pt2"}), "m.pt2", 422, "pt2_disabled"),
    ]  # fmt: skip
    for content, name, status, code in cases:
        response = api.upload_model(api.key_a, content, filename=name)
        assert (response.status_code, response.json()["code"]) == (status, code), name
        assert response.headers["content-type"] == "application/problem+json"
    assert _stored_nothing(api)


def test_hugging_face_archive_and_torch_state_dict_are_accepted(api: RunningApi) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in [("gpt/config.json", b'{"model_type": "gpt2"}'),
                           ("gpt/model.safetensors", safetensors_mlp())]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    hf = api.upload_model(api.key_a, buffer.getvalue(), filename="gpt.tar.gz")
    assert hf.status_code == 201, hf.text
    assert (hf.json()["format"], hf.json()["arch_config"]) == ("hf", {"model_type": "gpt2"})
    # What torch.save(model.state_dict()) writes: only tensor-rebuilding globals.
    state_dict_pickle = (
        b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wq\x02ctorch._utils\n"
        b"_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05"
        b"X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x04tq\x08QK\x00K\x04\x85q\tK\x01"
        b"\x85q\n\x89h\x00)Rq\x0btq\x0cRq\rs."
    )
    pickletools.dis(state_dict_pickle, out=io.StringIO())  # a valid stream
    state_dict = zip_archive({"archive/data.pkl": state_dict_pickle, "archive/data/0": b"\0" * 16})
    pt = api.upload_model(api.key_a, state_dict, filename="w.pt", arch="mlp")
    assert pt.status_code == 201, pt.text
    assert pt.json()["format"] == "torch_state_dict"


def test_oversized_and_non_multipart_uploads_are_refused(api: RunningApi) -> None:
    big = api.upload_model(api.key_a, b"\0" * (api.settings.max_upload_bytes + 10))
    assert (big.status_code, big.json()["code"]) == (413, "checkpoint_too_large")
    raw = api.client.post(
        "/v1/models", headers=api.auth(api.key_a) | {"Content-Type": "application/octet-stream"},
        content=safetensors_mlp(),
    )  # fmt: skip
    assert (raw.status_code, raw.json()["code"]) == (415, "unsupported_media_type")
    no_file = api.client.post("/v1/models", headers=api.auth(api.key_a), files={"arch": "mlp"})
    assert (no_file.status_code, no_file.json()["code"]) == (422, "validation_error")
    assert _stored_nothing(api)


def test_datasets_are_sniffed_and_referenced_as_upload_uris(api: RunningApi) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((10, 4), np.float32), y=np.zeros(10, np.int64))
    cases = [(buffer.getvalue(), "d.npz", "npz"), (b"a,b,label\n1,2,0\n", "d.csv", "csv"),
             (np.arange(10, dtype=np.uint16).tobytes(), "tokens.bin", "bin")]  # fmt: skip
    for content, name, fmt in cases:
        response = api.client.post(
            "/v1/datasets", headers=api.auth(api.key_a), files={"file": (name, content)}
        )
        assert response.status_code == 201, response.text
        dataset = response.json()
        assert (dataset["format"], dataset["uri"]) == (fmt, f"upload://{dataset['id']}")
    refused = api.client.post(
        "/v1/datasets", headers=api.auth(api.key_a), files={"file": ("x.dat", b"\x00\x01\x02")}
    )
    assert (refused.status_code, refused.json()["code"]) == (415, "unsupported_data_format")


def test_stack_global_names_fetched_from_the_memo_are_seen() -> None:
    # builtins.open via STACK_GLOBAL with both names fetched from the memo, after decoy strings.
    crafted = (
        b"\x80\x04\x8c\x08builtins\x94\x8c\x04open\x94\x8c\x05torch\x8c\x04Size0h\x00h\x01\x93."
    )
    assert ("builtins", "open") in pickle_globals(crafted)
