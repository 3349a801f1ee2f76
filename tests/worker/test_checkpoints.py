"""Checkpoint intake: supported formats load exactly; a hostile corpus is refused unexecuted.

Every hostile file is generated here at test time (no binary fixtures). Files that would run
code when unpickled create a marker file if they ever are; each test asserts it does not exist.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lrprobe.worker.intake.checkpoints.architectures import get_architecture
from lrprobe.worker.intake.checkpoints.loading import load_checkpoint, save_checkpoint
from lrprobe.worker.intake.checkpoints.pt2 import pt2_available
from lrprobe.worker.intake.errors import IntakeError

MLP_CONFIG = {"sizes": [6, 5, 3]}


def _mlp(config: dict[str, Any] | None = None) -> nn.Module:
    torch.manual_seed(0)
    return get_architecture("mlp").build(config or MLP_CONFIG)


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


class _Marker:
    """Unpickling this runs ``touch <path>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.system, (f"touch {self.path}",))


# --- supported formats ---------------------------------------------------------------------


def test_safetensors_with_metadata_needs_no_arguments(tmp_path: Path) -> None:
    model = _mlp()
    save_checkpoint(model, tmp_path / "m.safetensors", "mlp", MLP_CONFIG)

    loaded = load_checkpoint(tmp_path / "m.safetensors")

    _assert_same_state(loaded.model, model)
    assert loaded.format == "safetensors"
    assert loaded.arch == "mlp"
    assert loaded.config["sizes"] == [6, 5, 3]
    assert loaded.num_params == 6 * 5 + 5 + 5 * 3 + 3
    assert loaded.param_names == [
        "layers.0.weight",
        "layers.0.bias",
        "layers.1.weight",
        "layers.1.bias",
    ]
    assert [(g.name, g.param_names) for g in loaded.partition] == [
        ("layers.0", ("layers.0.weight", "layers.0.bias")),
        ("layers.1", ("layers.1.weight", "layers.1.bias")),
    ]


def test_loaded_model_is_in_train_mode_with_trainable_parameters(tmp_path: Path) -> None:
    model = _mlp()
    for param in model.parameters():
        param.requires_grad_(False)
    save_checkpoint(model.eval(), tmp_path / "m.safetensors", "mlp", MLP_CONFIG)

    loaded = load_checkpoint(tmp_path / "m.safetensors")

    assert loaded.model.training
    assert all(p.requires_grad for p in loaded.model.parameters())


def test_plain_safetensors_state_dict_with_arch_arguments(tmp_path: Path) -> None:
    model = _mlp()
    save_file(model.state_dict(), tmp_path / "plain.safetensors")

    loaded = load_checkpoint(tmp_path / "plain.safetensors", "mlp", MLP_CONFIG)

    _assert_same_state(loaded.model, model)


def test_arguments_override_metadata(tmp_path: Path) -> None:
    save_checkpoint(_mlp(), tmp_path / "m.safetensors", "mlp", MLP_CONFIG)

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path / "m.safetensors", arch_config={"sizes": [6, 7, 3]})

    assert info.value.code == "weights_mismatch"


def test_metadata_config_is_ignored_for_another_arch(tmp_path: Path) -> None:
    save_checkpoint(_mlp(), tmp_path / "m.safetensors", "mlp", MLP_CONFIG)

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path / "m.safetensors", arch="cnn")

    assert info.value.code == "weights_mismatch"
    assert "'cnn'" in info.value.message


def test_torch_state_dict_loads_with_arch(tmp_path: Path) -> None:
    model = _mlp()
    torch.save(model.state_dict(), tmp_path / "m.pt")

    loaded = load_checkpoint(tmp_path / "m.pt", "mlp", MLP_CONFIG)

    _assert_same_state(loaded.model, model)
    assert loaded.format == "torch_state_dict"


def test_format_comes_from_content_not_extension(tmp_path: Path) -> None:
    model = _mlp()
    save_checkpoint(model, tmp_path / "looks_like.pt", "mlp", MLP_CONFIG)
    torch.save(model.state_dict(), tmp_path / "looks_like.safetensors")

    from_safetensors = load_checkpoint(tmp_path / "looks_like.pt")
    from_torch = load_checkpoint(tmp_path / "looks_like.safetensors", "mlp", MLP_CONFIG)

    assert from_safetensors.format == "safetensors"
    assert from_torch.format == "torch_state_dict"


def test_half_precision_checkpoint_keeps_its_dtype(tmp_path: Path) -> None:
    model = _mlp().to(torch.bfloat16)
    save_checkpoint(model, tmp_path / "m.safetensors", "mlp", MLP_CONFIG)

    loaded = load_checkpoint(tmp_path / "m.safetensors")

    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    _assert_same_state(loaded.model, model)


def test_batchnorm_buffers_round_trip(tmp_path: Path) -> None:
    model = get_architecture("cnn").build({"batch_norm": True, "image_size": 8})
    model(torch.randn(4, 1, 8, 8))  # moves running stats away from their initial values
    save_checkpoint(model, tmp_path / "m.safetensors", "cnn", {"batch_norm": True, "image_size": 8})

    loaded = load_checkpoint(tmp_path / "m.safetensors")

    _assert_same_state(loaded.model, model)
    assert int(loaded.model.get_buffer("features.1.num_batches_tracked")) == 1


def test_untied_weights_do_not_load_into_a_tied_gpt(tmp_path: Path) -> None:
    config = {"n_layer": 1, "n_embd": 16, "tie_weights": False}
    model = get_architecture("gpt").build(config)
    save_file(dict(model.state_dict()), tmp_path / "untied.safetensors")

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path / "untied.safetensors", "gpt", {**config, "tie_weights": True})

    assert info.value.code == "weights_mismatch"
    assert "ties" in info.value.message


def test_save_checkpoint_refuses_a_model_of_another_architecture(tmp_path: Path) -> None:
    with pytest.raises(IntakeError) as info:
        save_checkpoint(_mlp(), tmp_path / "m.safetensors", "mlp", {"sizes": [6, 9, 3]})

    assert info.value.code == "weights_mismatch"
    assert not (tmp_path / "m.safetensors").exists()


# --- argument and weight errors -------------------------------------------------------------


def test_state_dict_without_arch_asks_for_one(tmp_path: Path) -> None:
    save_file(_mlp().state_dict(), tmp_path / "plain.safetensors")

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path / "plain.safetensors")

    assert info.value.code == "arch_required"


def test_unknown_arch_argument(tmp_path: Path) -> None:
    save_file(_mlp().state_dict(), tmp_path / "plain.safetensors")

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path / "plain.safetensors", "vgg")

    assert info.value.code == "unknown_architecture"


def test_invalid_arch_config_in_metadata(tmp_path: Path) -> None:
    save_file(
        _mlp().state_dict(),
        tmp_path / "m.safetensors",
        metadata={"lrprobe.arch": "mlp", "lrprobe.arch_config": "{not json"},
    )

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path / "m.safetensors")

    assert info.value.code == "invalid_arch_config"


def _without(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(state: dict[str, torch.Tensor]) -> None:
        del state[key]

    return edit


def _transposed(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(state: dict[str, torch.Tensor]) -> None:
        state[key] = state[key].t().contiguous()

    return edit


def _extra(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(state: dict[str, torch.Tensor]) -> None:
        state[key] = torch.zeros(2)

    return edit


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_without("layers.1.bias"), "missing 'layers.1.bias' (3,)"),
        (_transposed("layers.0.weight"), "'layers.0.weight' expected (5, 6), got (6, 5)"),
        (_extra("head.weight"), "unexpected 'head.weight'"),
    ],
    ids=["missing-key", "wrong-shape", "unexpected-key"],
)
def test_weights_that_do_not_fit_are_named(
    tmp_path: Path, edit: Callable[[dict[str, torch.Tensor]], None], expected: str
) -> None:
    state = dict(_mlp().state_dict())
    edit(state)
    save_file(state, tmp_path / "m.safetensors")

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path / "m.safetensors", "mlp", MLP_CONFIG)

    assert info.value.code == "weights_mismatch"
    assert expected in info.value.message


def test_config_asking_for_a_huge_model_is_refused_before_allocating(tmp_path: Path) -> None:
    config = {"n_layer": 1, "n_embd": 16}
    save_checkpoint(
        get_architecture("gpt").build(config), tmp_path / "g.safetensors", "gpt", config
    )
    huge = {**config, "block_size": 1_000_000}  # a 10^12-entry attention mask

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path / "g.safetensors", arch_config=huge)

    assert info.value.code == "weights_mismatch"
    assert "bytes" in info.value.message


def test_mismatch_report_is_capped(tmp_path: Path) -> None:
    save_file({f"junk{i}": torch.zeros(1) for i in range(20)}, tmp_path / "m.safetensors")

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path / "m.safetensors", "mlp", MLP_CONFIG)

    assert "more" in info.value.message
    assert info.value.message.count("unexpected") <= 5


def test_training_checkpoint_dict_is_not_a_state_dict(tmp_path: Path) -> None:
    torch.save({"model": _mlp().state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path / "ckpt.pt", "mlp", MLP_CONFIG)

    assert info.value.code == "not_a_state_dict"


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path / "nothing.safetensors")

    assert info.value.code == "checkpoint_not_found"


# --- the hostile corpus --------------------------------------------------------------------


def _raw_pickle(dest: Path, marker: Path) -> Path:
    dest.write_bytes(pickle.dumps(_Marker(marker)))
    return dest


def _torch_saved_payload(dest: Path, marker: Path) -> Path:
    torch.save({"weight": torch.zeros(2), "payload": _Marker(marker)}, dest)
    return dest


def _full_module(dest: Path, marker: Path) -> Path:
    torch.save(_mlp(), dest)
    return dest


def _legacy_torch_save(dest: Path, marker: Path) -> Path:
    torch.save(_mlp().state_dict(), dest, _use_new_zipfile_serialization=False)
    return dest


def _torchscript(dest: Path, marker: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated
        torch.jit.save(torch.jit.script(nn.Linear(2, 2)), dest)
    return dest


def _pt2_with_pickle(dest: Path, marker: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(nn.Linear(2, 2), (torch.randn(1, 2),))
        torch.export.save(program, dest)
    with zipfile.ZipFile(dest, "a") as zf:
        root = zf.namelist()[0].split("/")[0]
        zf.writestr(f"{root}/data/weights/payload.pkl", pickle.dumps(_Marker(marker)))
    return dest


def _truncated_safetensors(dest: Path, marker: Path) -> Path:
    save_checkpoint(_mlp(), dest, "mlp", MLP_CONFIG)
    data = dest.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def _header_claiming_gigabytes(dest: Path, marker: Path) -> Path:
    """A safetensors length prefix of 8 GiB before a small header: nothing may be allocated
    or read on the prefix's word."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    dest.write_bytes(struct.pack("<Q", 8 * 2**30) + header + bytes(16))
    return dest


def _garbage(dest: Path, marker: Path) -> Path:
    dest.write_bytes(bytes(range(256)) * 16)
    return dest


def _empty(dest: Path, marker: Path) -> Path:
    dest.write_bytes(b"")
    return dest


def _truncated_zip(dest: Path, marker: Path) -> Path:
    torch.save(_mlp().state_dict(), dest)
    data = dest.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def _unrelated_zip(dest: Path, marker: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("notes/readme.txt", "hello")
    return dest


def _hf_config(extra: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"model_type": "gpt2", "n_layer": 1, **(extra or {})}).encode()


def _zip_traversal(dest: Path, marker: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("model/config.json", _hf_config())
        zf.writestr("../../PWNED", b"escaped")
    return dest


def _zip_absolute(dest: Path, marker: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("config.json", _hf_config())
        zf.writestr(str(marker), b"escaped")
    return dest


def _zip_bomb(dest: Path, marker: Path) -> Path:
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model/config.json", _hf_config())
        zf.writestr("model/model.safetensors", bytes(32 << 20))
    return dest


def _zip_symlink(dest: Path, marker: Path) -> Path:
    link = zipfile.ZipInfo("model/model.safetensors")
    link.external_attr = 0o120777 << 16
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("model/config.json", _hf_config())
        zf.writestr(link, "/etc/passwd")
    return dest


def _tar_with(*members: tarfile.TarInfo, data: dict[str, bytes]) -> Callable[[Path], Path]:
    def write(dest: Path) -> Path:
        with tarfile.open(dest, "w:gz") as tf:
            config = tarfile.TarInfo("model/config.json")
            config.size = len(_hf_config())
            tf.addfile(config, io.BytesIO(_hf_config()))
            for member in members:
                tf.addfile(member, io.BytesIO(data.get(member.name, b"")))
        return dest

    return write


def _tar_symlink(dest: Path, marker: Path) -> Path:
    link = tarfile.TarInfo("model/model.safetensors")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    return _tar_with(link, data={})(dest)


def _tar_traversal(dest: Path, marker: Path) -> Path:
    escape = tarfile.TarInfo("model/../../PWNED")
    escape.size = 7
    return _tar_with(escape, data={escape.name: b"escaped"})(dest)


def _truncated_tar(dest: Path, marker: Path) -> Path:
    payload = bytes(range(256)) * 64
    member = tarfile.TarInfo("model/model.safetensors")
    member.size = len(payload)
    _tar_with(member, data={member.name: payload})(dest)
    data = dest.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def _hf_remote_code(dest: Path, marker: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr(
            "model/config.json",
            _hf_config({"auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilModel"}}),
        )
        zf.writestr("model/modeling_evil.py", f"import os; os.system('touch {marker}')")
        zf.writestr("model/model.safetensors", b"")
    return dest


def _hf_pickled_weights(dest: Path, marker: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("model/config.json", _hf_config())
        zf.writestr("model/pytorch_model.bin", pickle.dumps(_Marker(marker)))
    return dest


HOSTILE: list[tuple[str, Callable[[Path, Path], Path], str]] = [
    ("raw-pickle-with-reduce", _raw_pickle, "pickle_refused"),
    ("torch-save-with-reduce", _torch_saved_payload, "pickle_refused"),
    ("torch-save-full-module", _full_module, "pickle_refused"),
    ("legacy-torch-save", _legacy_torch_save, "pickle_refused"),
    ("torchscript", _torchscript, "torchscript_refused"),
    ("pt2-with-pickle-member", _pt2_with_pickle, "pt2_disabled"),
    ("truncated-safetensors", _truncated_safetensors, "unsupported_checkpoint"),
    ("header-claiming-gigabytes", _header_claiming_gigabytes, "unsupported_checkpoint"),
    ("garbage-bytes", _garbage, "unsupported_checkpoint"),
    ("empty-file", _empty, "unsupported_checkpoint"),
    ("truncated-zip", _truncated_zip, "unsupported_checkpoint"),
    ("unrelated-zip", _unrelated_zip, "unsupported_checkpoint"),
    ("zip-path-traversal", _zip_traversal, "unsafe_archive"),
    ("zip-absolute-path", _zip_absolute, "unsafe_archive"),
    ("zip-bomb", _zip_bomb, "unsafe_archive"),
    ("zip-symlink", _zip_symlink, "unsafe_archive"),
    ("tar-symlink", _tar_symlink, "unsafe_archive"),
    ("tar-path-traversal", _tar_traversal, "unsafe_archive"),
    ("tar-truncated", _truncated_tar, "unsupported_checkpoint"),
    ("hf-remote-code", _hf_remote_code, "hf_remote_code_refused"),
    ("hf-pickled-weights-only", _hf_pickled_weights, "hf_invalid_model"),
]


@pytest.mark.parametrize(("name", "build", "code"), HOSTILE, ids=[n for n, _, _ in HOSTILE])
def test_hostile_checkpoint_is_refused_without_running_it(
    tmp_path: Path, name: str, build: Callable[[Path, Path], Path], code: str
) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    path = build(work / "upload.bin", marker)

    with pytest.raises(IntakeError) as info:
        load_checkpoint(path)

    assert info.value.code == code, info.value
    assert info.value.message.endswith(".")
    if name == "hf-pickled-weights-only":
        assert "save_pretrained(safe_serialization=True)" in info.value.message
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "upload.bin"]


@pytest.mark.parametrize("arch", [None, "mlp"])
def test_pickle_is_refused_even_with_an_architecture(tmp_path: Path, arch: str | None) -> None:
    marker = tmp_path / "PWNED"
    path = _torch_saved_payload(tmp_path / "m.pt", marker)

    with pytest.raises(IntakeError) as info:
        load_checkpoint(path, arch)

    assert info.value.code == "pickle_refused"
    assert not marker.exists()


def test_pt2_with_pickle_member_is_refused_when_pt2_is_enabled(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = _pt2_with_pickle(tmp_path / "m.pt2", marker)

    with pytest.raises(IntakeError) as info:
        load_checkpoint(path, allow_pt2=True)

    # On the audited torch the pre-scan runs and names the pickle; on any other, .pt2 stays off.
    if pt2_available():
        assert info.value.code == "pt2_refused"
        assert "payload.pkl" in info.value.message
    else:
        assert info.value.code == "pt2_disabled"
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["file", "archive"])
def test_oversized_checkpoint_is_refused(tmp_path: Path, kind: str) -> None:
    model = _mlp()
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, "mlp", MLP_CONFIG)
    if kind == "archive":
        with zipfile.ZipFile(tmp_path / "m.zip", "w") as zf:
            zf.writestr("model/config.json", _hf_config())
            zf.writestr("model/model.safetensors", path.read_bytes() * 4)
        path = tmp_path / "m.zip"

    with pytest.raises(IntakeError) as info:
        load_checkpoint(path, max_bytes=path.stat().st_size - 1 if kind == "file" else 1024)

    assert info.value.code == "checkpoint_too_large"


def test_hf_folder_without_transformers_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_bytes(_hf_config())
    save_file({"wte.weight": torch.zeros(2, 2)}, tmp_path / "model.safetensors")
    monkeypatch.setitem(sys.modules, "transformers", None)

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path)

    assert info.value.code == "hf_unavailable"
    assert "lrprobe[hf]" in info.value.message


def test_arch_argument_is_refused_for_hf_folders(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(_hf_config())

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path, "mlp")

    assert info.value.code == "arch_not_applicable"


def test_hf_folder_with_symlinked_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.json").write_bytes(_hf_config())
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").symlink_to(tmp_path / "elsewhere.json")

    with pytest.raises(IntakeError) as info:
        load_checkpoint(folder)

    assert info.value.code == "hf_invalid_model"
