"""Hugging Face model folders: ``config.json`` plus ``*.safetensors``, built by ``transformers``.

The model class comes from the built-in ``transformers`` mapping for the config's
``model_type``; configs that point at their own code (``auto_map``) are refused before
``transformers`` is even imported, and ``trust_remote_code=False`` is passed explicitly.
Weights are read only from safetensors; ``pytorch_model.bin`` (a pickle) is never opened.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from lrprobe.worker.intake.errors import IntakeError

CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
_MAX_CONFIG_BYTES = 1 << 20
_SHARD_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}\.safetensors")
_MODEL_TYPE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class HFModel:
    """How to build the folder's ``transformers`` model, and the weights to load into it."""

    build: Callable[[], nn.Module]
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]


def _invalid(message: str) -> IntakeError:
    return IntakeError(
        "hf_invalid_model",
        f"{message}; send a folder saved with save_pretrained(safe_serialization=True) "
        "(config.json + *.safetensors).",
    )


def select_members(paths: list[PurePosixPath]) -> set[PurePosixPath]:
    """From an archive's file list, the config, weights and index of the model folder in it.

    The folder is the one holding the shallowest ``config.json``; there must be exactly one.
    """
    configs = [p for p in paths if p.name == CONFIG_NAME]
    if not configs:
        raise _invalid("The archive has no config.json")
    depth = min(len(p.parts) for p in configs)
    top = [p for p in configs if len(p.parts) == depth]
    if len(top) > 1:
        raise _invalid("The archive holds several model folders at the same level")
    root = top[0].parent
    in_root = [p for p in paths if p.parent == root]
    if not any(p.name.endswith(".safetensors") for p in in_root) and any(
        p.name.endswith(_PICKLED_WEIGHTS) for p in in_root
    ):
        raise _pickled_weights_only()
    return {
        p for p in in_root if p.name in {CONFIG_NAME, INDEX_NAME} or p.name.endswith(".safetensors")
    }


def _pickled_weights_only() -> IntakeError:
    return IntakeError(
        "hf_invalid_model",
        "The model folder has only pickled weights (.bin/.pt), which are never unpickled "
        "here; re-save it with save_pretrained(safe_serialization=True).",
    )


def find_model_folder(extracted: Path, chosen: list[PurePosixPath]) -> Path:
    """The folder of the extracted ``config.json`` among ``chosen`` members."""
    config = next(p for p in chosen if p.name == CONFIG_NAME)
    return extracted / Path(*config.parent.parts)


def _regular_file(folder: Path, name: str) -> Path:
    path = folder / name
    if path.is_symlink() or not path.is_file():
        raise _invalid(f"{name} is missing or is not a regular file")
    if not path.resolve().is_relative_to(folder.resolve()):
        raise _invalid(f"{name} lies outside the model folder")
    return path


def _find_key(node: Any, key: str) -> bool:
    if isinstance(node, dict):
        return key in node or any(_find_key(v, key) for v in node.values())
    if isinstance(node, list):
        return any(_find_key(v, key) for v in node)
    return False


def read_config(folder: Path) -> dict[str, Any]:
    """The validated ``config.json`` of ``folder`` (no ``transformers`` needed)."""
    path = _regular_file(folder, CONFIG_NAME)
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise _invalid("config.json is larger than 1 MiB")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _invalid("config.json is not valid JSON") from None
    if not isinstance(config, dict):
        raise _invalid("config.json is not a JSON object")
    if _find_key(config, "auto_map"):
        raise IntakeError(
            "hf_remote_code_refused",
            "config.json has an 'auto_map', so the model needs its own Python code, which is "
            "never run here; send a model whose model_type is built into transformers, or "
            "safetensors weights for a built-in architecture.",
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not _MODEL_TYPE.fullmatch(model_type):
        raise _invalid("config.json has no usable 'model_type'")
    return config


def weight_files(folder: Path) -> list[Path]:
    """The safetensors shards of ``folder``, from the index when there is one."""
    index = folder / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(_regular_file(folder, INDEX_NAME).read_text("utf-8"))[
                "weight_map"
            ]
            names = sorted(set(weight_map.values()))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            raise _invalid(f"{INDEX_NAME} is not a valid safetensors index") from None
        if not all(isinstance(n, str) and _SHARD_NAME.fullmatch(n) for n in names):
            raise _invalid(f"{INDEX_NAME} names files that are not plain .safetensors names")
        return [_regular_file(folder, name) for name in names]
    shards = sorted(p.name for p in folder.iterdir() if p.name.endswith(".safetensors"))
    if not shards:
        if any(p.name.endswith(_PICKLED_WEIGHTS) for p in folder.iterdir()):
            raise _pickled_weights_only()
        raise _invalid("The model folder has no .safetensors weights")
    return [_regular_file(folder, name) for name in shards]


def _read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            shard = load_file(file, device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise IntakeError(
                "unsupported_checkpoint",
                f"The weights file {file.name} is truncated or corrupt ({exc}); send the "
                "complete safetensors files.",
            ) from None
        overlap = state.keys() & shard.keys()
        if overlap:
            raise _invalid(f"The tensor {sorted(overlap)[0]!r} appears in two weight files")
        state.update(shard)
    return state


def _builder(config: dict[str, Any]) -> Callable[[], nn.Module]:
    try:
        import transformers
    except ImportError:
        raise IntakeError(
            "hf_unavailable",
            "This worker has no transformers installed, so Hugging Face folders cannot be "
            "built; install lrprobe[hf] on the worker, or send safetensors weights for a "
            "built-in architecture.",
        ) from None
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fields = dict(config)
    model_type = fields.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        raise _invalid(f"model_type {model_type!r} is not built into transformers")
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **fields)
    except Exception as exc:
        raise _invalid(f"config.json was rejected by transformers ({str(exc)[:200]})") from None
    architectures = fields.get("architectures") or []
    causal = any(str(a).endswith(_CAUSAL_SUFFIXES) for a in architectures)
    auto_classes = [transformers.AutoModelForCausalLM] if causal else []
    auto_classes.append(transformers.AutoModel)

    def build() -> nn.Module:
        for auto_class in auto_classes:
            try:
                model = auto_class.from_config(hf_config, trust_remote_code=False)
            except ValueError:
                continue  # no model of this auto class for model_type: try the next one
            except Exception as exc:  # e.g. an attn_implementation whose package is missing
                raise _invalid(
                    f"transformers could not build the model ({type(exc).__name__}: "
                    f"{str(exc)[:200]})"
                ) from None
            if isinstance(model, nn.Module):
                return model
        raise _invalid(f"transformers cannot build a model for model_type {model_type!r}")

    return build


def load_hf_folder(folder: Path, max_bytes: int) -> HFModel:
    """Check ``folder``, read its weights and prepare to build its model with ``transformers``.

    Raises:
        IntakeError: ``hf_remote_code_refused``, ``hf_invalid_model``, ``hf_unavailable``,
            ``checkpoint_too_large`` or ``unsupported_checkpoint``.
    """
    config = read_config(folder)
    files = weight_files(folder)
    total = sum(f.stat().st_size for f in files)
    if total > max_bytes:
        raise IntakeError(
            "checkpoint_too_large",
            f"The model weights are {total} bytes, over the limit of {max_bytes}; send a "
            "smaller model or ask the operator to raise the size limit.",
        )
    build = _builder(config)
    return HFModel(build=build, state_dict=_read_weights(files), config=config)
