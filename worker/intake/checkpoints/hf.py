"""Hugging Face model folders: ``config.json`` plus ``*.safetensors``, built by ``transformers``.

The model class comes from the built-in ``transformers`` mapping for the config's
``model_type``; configs that point at their own code (``auto_map``) are refused by the
rulebook's :func:`lrprobe.rules.hf_config.parse_config` before ``transformers`` is even
imported, and ``trust_remote_code=False`` is passed explicitly.
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

from lrprobe.rules.hf_config import (
    CONFIG_NAME,
    INDEX_NAME,
    MAX_CONFIG_BYTES,
    PICKLED_WEIGHTS,
    parse_config,
    pickled_weights_only,
)
from lrprobe.rules.hf_config import invalid_model as _invalid
from lrprobe.worker.intake.errors import IntakeError

_SHARD_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}\.safetensors")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class HFModel:
    """How to build the folder's ``transformers`` model, and the weights to load into it."""

    build: Callable[[], nn.Module]
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]


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


def read_config(folder: Path) -> dict[str, Any]:
    """The validated ``config.json`` of ``folder`` (no ``transformers`` needed)."""
    path = _regular_file(folder, CONFIG_NAME)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise _invalid("config.json is larger than 1 MiB")
    return parse_config(path.read_bytes())


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
        if any(p.name.endswith(PICKLED_WEIGHTS) for p in folder.iterdir()):
            raise pickled_weights_only()
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
    auto_classes: list[type[transformers.AutoModel] | type[transformers.AutoModelForCausalLM]] = (
        [transformers.AutoModelForCausalLM] if causal else []
    )
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
