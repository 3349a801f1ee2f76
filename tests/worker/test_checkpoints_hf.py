"""Hugging Face folders and archives, built with transformers (skipped where it is absent)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from lrprobe.worker.intake.checkpoints.loading import load_checkpoint
from lrprobe.worker.intake.errors import IntakeError

transformers = pytest.importorskip("transformers")


def _gpt2_config(**overrides: Any) -> Any:
    fields = {
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 16,
        "vocab_size": 50,
        "n_positions": 32,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    return transformers.GPT2Config(**{**fields, **overrides})


def _save(model: Any, folder: Path, **kwargs: Any) -> Path:
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(_gpt2_config())
    return _save(model, tmp_path_factory.mktemp("hf") / "tiny-gpt2")


def _assert_loaded_matches(loaded: Any, folder: Path) -> None:
    saved: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        saved.update(load_file(file))
    state = loaded.model.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


def test_hf_folder_loads_its_weights(gpt2_folder: Path) -> None:
    loaded = load_checkpoint(gpt2_folder)

    _assert_loaded_matches(loaded, gpt2_folder)
    assert loaded.format == "hf" and loaded.arch is None
    assert loaded.config["model_type"] == "gpt2"
    assert type(loaded.model).__name__ == "GPT2LMHeadModel"
    assert loaded.model.get_parameter("lm_head.weight") is loaded.model.get_parameter(
        "transformer.wte.weight"
    )
    assert loaded.num_params == sum(p.numel() for p in loaded.model.parameters())
    assert loaded.partition


@pytest.mark.parametrize("fmt", ["zip", "gztar", "tar"])
def test_hf_archive_loads(gpt2_folder: Path, tmp_path: Path, fmt: str) -> None:
    archive = shutil.make_archive(
        str(tmp_path / "upload"), fmt, gpt2_folder.parent, gpt2_folder.name
    )

    loaded = load_checkpoint(archive)

    _assert_loaded_matches(loaded, gpt2_folder)


def test_sharded_hf_folder_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = _save(
        transformers.GPT2LMHeadModel(_gpt2_config(n_layer=2)), tmp_path / "m", max_shard_size="8KB"
    )
    assert (folder / "model.safetensors.index.json").exists()

    loaded = load_checkpoint(folder)

    _assert_loaded_matches(loaded, folder)


def test_hf_base_model_without_head_loads(tmp_path: Path) -> None:
    folder = _save(transformers.GPT2Model(_gpt2_config()), tmp_path / "base")

    loaded = load_checkpoint(folder)

    assert type(loaded.model).__name__ == "GPT2Model"
    _assert_loaded_matches(loaded, folder)


def test_hf_weights_of_another_size_are_named(gpt2_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(gpt2_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_embd": 32}))

    with pytest.raises(IntakeError) as info:
        load_checkpoint(folder)

    assert info.value.code == "weights_mismatch"
    assert "transformer.wte.weight" in info.value.message


def test_hf_unknown_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not_a_real_model"}))
    save_file({"w": torch.zeros(1)}, tmp_path / "model.safetensors")

    with pytest.raises(IntakeError) as info:
        load_checkpoint(tmp_path)

    assert info.value.code == "hf_invalid_model"
