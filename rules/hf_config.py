"""Hugging Face model folders, without ``transformers``: which archive members make the model
folder, and whether its ``config.json`` may be built at all.

A config that points at its own code (``auto_map``, at any depth) is refused: building it would
run that code. The JSON is parsed with size and depth limits before anything walks it.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from lrprobe.rules.errors import RuleError
from lrprobe.rules.json_limits import JsonLimitError, load_bounded

CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
MAX_CONFIG_BYTES = 1 << 20
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MODEL_TYPE = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def invalid_model(message: str) -> RuleError:
    return RuleError(
        "hf_invalid_model",
        f"{message}; send a folder saved with save_pretrained(safe_serialization=True) "
        "(config.json + *.safetensors).",
    )


def pickled_weights_only() -> RuleError:
    return RuleError(
        "hf_invalid_model",
        "The model folder has only pickled weights (.bin/.pt), which are never unpickled "
        "here; re-save it with save_pretrained(safe_serialization=True).",
    )


def select_members(paths: list[PurePosixPath]) -> set[PurePosixPath]:
    """From an archive's file list, the config, weights and index of the model folder in it.

    The folder is the one holding the shallowest ``config.json``; there must be exactly one,
    and it must hold safetensors weights.
    """
    configs = [p for p in paths if p.name == CONFIG_NAME]
    if not configs:
        raise invalid_model("The archive has no config.json")
    depth = min(len(p.parts) for p in configs)
    top = [p for p in configs if len(p.parts) == depth]
    if len(top) > 1:
        raise invalid_model("The archive holds several model folders at the same level")
    root = top[0].parent
    in_root = [p for p in paths if p.parent == root]
    if not any(p.name.endswith(".safetensors") for p in in_root):
        if any(p.name.endswith(PICKLED_WEIGHTS) for p in in_root):
            raise pickled_weights_only()
        raise invalid_model("The model folder has no .safetensors weights")
    return {
        p for p in in_root if p.name in {CONFIG_NAME, INDEX_NAME} or p.name.endswith(".safetensors")
    }


def parse_config(raw: bytes) -> dict[str, Any]:
    """``config.json``'s content, refused if it is over the limits, not a JSON object, or names
    its own code."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise invalid_model("config.json is larger than 1 MiB")
    try:
        config = load_bounded(raw, max_bytes=MAX_CONFIG_BYTES)
    except JsonLimitError as exc:
        raise invalid_model(f"config.json was refused: {exc}") from None
    if not isinstance(config, dict):
        raise invalid_model("config.json is not a JSON object")
    if _has_key(config, "auto_map"):
        raise RuleError(
            "hf_remote_code_refused",
            "config.json has an 'auto_map', so the model needs its own Python code, which is "
            "never run here; send a model whose model_type is built into transformers, or "
            "safetensors weights for a built-in architecture.",
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not _MODEL_TYPE.fullmatch(model_type):
        raise invalid_model("config.json has no usable 'model_type'")
    return config


def _has_key(node: Any, key: str) -> bool:
    # Iterative: load_bounded caps the depth, but a wide document should not recurse either.
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            if key in current:
                return True
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return False
