"""Safe checkpoint intake: turn a user's file or folder into a module, never running their code.

The format is read from the content (magic bytes, zip member names), never from the extension:

- ``safetensors``: read by ``safetensors`` (no code path at all); module from the registry.
- ``torch_state_dict``: zip-format ``torch.save`` file read with ``torch.load(weights_only=True)``
  and required to be a flat ``{str: Tensor}``; module from the registry.
- ``hf``: folder, zip or tar with ``config.json`` + safetensors; module from ``transformers``.
- ``pt2``: ``torch.export`` archive, only when enabled and after the pre-scan of
  :mod:`lrprobe.worker.intake.checkpoints.pt2`; module is the exported graph.

Registry and ``transformers`` modules are first built on the meta device and checked against
the weights (names, shapes, total size), so a config that asks for a huge model is refused
before memory is allocated.

Refused, each with a sentence that says what to send instead: TorchScript (its ``code/`` is
Python that TorchScript compiles and runs), pickled objects including ``torch.save(model)``
(unpickling runs arbitrary code), raw-pickle legacy ``.pt`` files (``weights_only`` has had
bypasses on that format; the zip format is what ``torch.save`` writes by default), anything
else or truncated.

Loaded modules keep their default **train** mode (dropout and BatchNorm behave as in training);
the probe decides the mode it needs. Exported ``.pt2`` modules have their mode fixed at export.
Floating parameters get ``requires_grad=True``.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lrprobe.rules.archives import extract_members, list_zip_members
from lrprobe.rules.checkpoint_formats import (
    ARCH_METADATA_KEY,
    CONFIG_METADATA_KEY,
    admitted_zip_kind,
    arch_required,
    check_no_arch,
    file_kind,
    pickle_refused,
    unsupported,
)
from lrprobe.rules.hf_config import select_members
from lrprobe.worker.intake.checkpoints.architectures import ArchitectureSpec, get_architecture
from lrprobe.worker.intake.checkpoints.hf import find_model_folder, load_hf_folder
from lrprobe.worker.intake.checkpoints.pt2 import load_pt2
from lrprobe.worker.intake.errors import IntakeError, intake_errors
from lrprobe.worker.newton import Group, partition

CheckpointFormat = Literal["safetensors", "torch_state_dict", "hf", "pt2"]

DEFAULT_MAX_BYTES = 8 << 30
"""Cap used when the caller gives none: archives need one against bombs in any case."""

_BUILD_SLACK_BYTES = 256 << 20
_MAX_REPORTED_PROBLEMS = 5


@dataclass
class LoadedModel:
    """A checkpoint turned into a module, with what the service shows about it.

    ``model`` is in its default train mode with ``requires_grad=True`` on floating parameters.
    ``arch``/``config`` are the registry entry and validated config (``None``/``{}`` for
    ``pt2``; for ``hf`` ``arch`` is ``None`` and ``config`` is ``config.json``).
    ``partition`` is the default per-layer partition
    ``lrprobe.worker.newton.partition(model, "layer")``.
    """

    model: nn.Module
    arch: str | None
    config: dict[str, Any]
    format: CheckpointFormat
    num_params: int
    param_names: list[str]
    partition: list[Group] = field(repr=False)


@intake_errors
def load_checkpoint(
    path: str | os.PathLike[str],
    arch: str | None = None,
    arch_config: Mapping[str, Any] | BaseModel | None = None,
    *,
    max_bytes: int | None = None,
    allow_pt2: bool = False,
) -> LoadedModel:
    """Load the checkpoint at ``path`` without executing anything from it.

    Args:
        path: a file (safetensors, zip-format ``torch.save`` state dict, ``.pt2``, zip/tar of
            a Hugging Face folder) or a Hugging Face model folder.
        arch, arch_config: the registry architecture and its config for state dicts. They
            override the ``lrprobe.arch``/``lrprobe.arch_config`` safetensors metadata; when
            ``arch`` is given without a config, the metadata config is used only if it was
            written for the same architecture.
        max_bytes: size cap for the file, the folder's weights, or an archive's contents
            (default :data:`DEFAULT_MAX_BYTES`).
        allow_pt2: accept ``torch.export`` archives (off by default: see
            :mod:`lrprobe.worker.intake.checkpoints.pt2` for the residual risk).

    Raises:
        IntakeError: with a stable code and a sentence saying what to send instead.
    """
    source = Path(path)
    cap = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    if source.is_dir():
        check_no_arch("a Hugging Face model folder", arch, arch_config)
        return _load_hf(source, cap)
    if not source.is_file():
        raise IntakeError(
            "checkpoint_not_found",
            f"There is no checkpoint file or folder at {str(source)!r}; pass the path of a "
            "saved checkpoint.",
        )
    size = source.stat().st_size
    _check_size(size, cap)
    if size == 0:
        raise unsupported("The checkpoint file is empty")
    with source.open("rb") as f:
        head = f.read(512)

    kind = file_kind(head)
    if kind == "safetensors":
        return _load_safetensors(source, arch, arch_config)
    if kind == "zip":
        return _load_zip(source, cap, arch, arch_config, allow_pt2)
    check_no_arch("a Hugging Face model archive", arch, arch_config)
    return _load_hf_archive(source, cap)


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    arch: str,
    config: Mapping[str, Any] | BaseModel | None = None,
) -> None:
    """Write ``model``'s state dict as safetensors with ``arch`` and ``config`` as metadata.

    Tied tensors are stored once (safetensors refuses shared storage); loading restores the
    tie from the architecture. The state dict is checked against the architecture first, so a
    file written here always loads.

    Raises:
        IntakeError: ``unknown_architecture``, ``invalid_arch_config``, ``weights_mismatch``.
    """
    spec = get_architecture(arch)
    validated = spec.validate_config(config)
    with torch.device("meta"):
        reference = spec.build(validated)
    state = _dedupe_shared(model.state_dict())
    _match_state(reference, state, _label(spec, validated), compare_values=False)
    metadata = {
        ARCH_METADATA_KEY: spec.name,
        CONFIG_METADATA_KEY: json.dumps(validated.model_dump(mode="json"), sort_keys=True),
        "format": "pt",
    }
    save_file(state, os.fspath(path), metadata=metadata)


# --- detection helpers ---------------------------------------------------------------------


def _check_size(size: int, cap: int) -> None:
    if size > cap:
        raise IntakeError(
            "checkpoint_too_large",
            f"The checkpoint is {size} bytes, over the limit of {cap}; send a smaller model "
            "or ask the operator to raise the size limit.",
        )


# --- safetensors and torch state dicts -----------------------------------------------------


def _out_of_memory(exc: BaseException) -> bool:
    """safetensors reports a refused allocation (ENOMEM) as a read error of the file."""
    return isinstance(exc, MemoryError) or "cannot allocate memory" in str(exc).lower()


def _load_safetensors(
    source: Path, arch: str | None, arch_config: Mapping[str, Any] | BaseModel | None
) -> LoadedModel:
    try:
        with safe_open(os.fspath(source), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        if _out_of_memory(exc):  # a process memory cap refuses the mmap: not the file's fault
            raise MemoryError(str(exc)) from None
        raise unsupported(f"The safetensors file is truncated or corrupt ({exc})") from None
    meta_arch = metadata.get(ARCH_METADATA_KEY)
    meta_config: dict[str, Any] | None = None
    raw_config = metadata.get(CONFIG_METADATA_KEY)
    if raw_config is not None and (arch is None or arch == meta_arch):
        try:
            meta_config = json.loads(raw_config)
        except ValueError:
            meta_config = None
        if not isinstance(meta_config, dict):
            raise IntakeError(
                "invalid_arch_config",
                f"The safetensors metadata {CONFIG_METADATA_KEY!r} is not a JSON object; pass "
                "arch_config explicitly or re-save with save_checkpoint.",
            )
    chosen_arch = arch if arch is not None else meta_arch
    chosen_config = arch_config if arch_config is not None else meta_config
    return _load_into_registry(state, chosen_arch, chosen_config, "safetensors")


def _load_torch_state_dict(
    source: Path, arch: str | None, arch_config: Mapping[str, Any] | BaseModel | None
) -> LoadedModel:
    if torch.__version__ < "2.6":  # pragma: no cover - the worker pins a newer torch
        raise pickle_refused("This worker's torch predates the weights_only fixes of 2.6")
    try:
        # Explicit weights_only=True: torch's restricted unpickler, tensors and containers only.
        # A file object, not a path: torch.load picks a loader by extension for paths.
        with source.open("rb") as f:
            loaded = torch.load(f, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError:
        raise pickle_refused(
            "The file holds pickled objects other than tensors (for example a whole module "
            "saved with torch.save(model))"
        ) from None
    except Exception as exc:
        raise unsupported(f"The torch.save file is truncated or corrupt ({exc})") from None
    if not isinstance(loaded, Mapping):
        raise IntakeError(
            "not_a_state_dict",
            f"The torch.save file holds a {type(loaded).__name__}, not a state dict; save "
            "model.state_dict() and send that.",
        )
    bad = [
        k for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    if bad:
        shown = ", ".join(repr(k) for k in bad[:_MAX_REPORTED_PROBLEMS])
        raise IntakeError(
            "not_a_state_dict",
            f"The torch.save file holds a dict whose entries {shown} are not tensors (a "
            "training checkpoint?); save model.state_dict() itself and send that.",
        )
    state = {k: v.detach() for k, v in loaded.items()}
    return _load_into_registry(state, arch, arch_config, "torch_state_dict")


def _load_into_registry(
    state: dict[str, torch.Tensor],
    arch: str | None,
    config: Mapping[str, Any] | BaseModel | None,
    fmt: CheckpointFormat,
) -> LoadedModel:
    if arch is None:
        raise arch_required("and its config")
    spec = get_architecture(arch)
    validated = spec.validate_config(config)
    model = _build_and_load(lambda: spec.build(validated), state, _label(spec, validated))
    return _finish(model, spec.name, validated.model_dump(mode="json"), fmt)


def _label(spec: ArchitectureSpec[Any], config: BaseModel) -> str:
    return f"architecture '{spec.name}' with config {json.dumps(config.model_dump(mode='json'))}"


# --- matching weights to a module -----------------------------------------------------------


def _alias_groups(model: nn.Module) -> list[tuple[str, ...]]:
    """State-dict names grouped by the tensor object they share (tied weights)."""
    by_id: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), []).append(name)
    for name, buffer in model.named_buffers(remove_duplicate=False):
        by_id.setdefault(id(buffer), []).append(name)
    state_names = set(model.state_dict())
    groups = []
    for names in by_id.values():
        kept = tuple(n for n in names if n in state_names)
        if kept:
            groups.append(kept)
    grouped = {n for g in groups for n in g}
    groups += [(n,) for n in state_names - grouped]
    return groups


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _match_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], label: str, *, compare_values: bool
) -> dict[str, torch.Tensor]:
    """Check ``state`` against ``model``'s state dict and return it completed with tied names.

    Raises:
        IntakeError: ``weights_mismatch`` naming up to a few offending keys.
    """
    expected = model.state_dict()
    problems: list[str] = []
    full: dict[str, torch.Tensor] = {}
    for key in state:
        if key not in expected:
            problems.append(f"unexpected {key!r}")
    for group in _alias_groups(model):
        present = [n for n in group if n in state]
        if not present:
            problems.append(f"missing {group[0]!r} {_shape(expected[group[0]])}")
            continue
        source = state[present[0]]
        for name in present:
            got, want = state[name], expected[name]
            if got.shape != want.shape:
                problems.append(f"{name!r} expected {_shape(want)}, got {_shape(got)}")
            elif got.is_floating_point() != want.is_floating_point():
                problems.append(f"{name!r} expected {want.dtype}, got {got.dtype}")
            elif compare_values and name != present[0] and not torch.equal(got, source):
                problems.append(
                    f"{name!r} and {present[0]!r} differ but the architecture ties them"
                )
        for name in group:
            full[name] = source
    if problems:
        shown = "; ".join(problems[:_MAX_REPORTED_PROBLEMS])
        more = len(problems) - _MAX_REPORTED_PROBLEMS
        if more > 0:
            shown += f"; and {more} more"
        raise IntakeError(
            "weights_mismatch",
            f"The weights do not fit {label}: {shown}; send weights saved from a model built "
            "with the same architecture and config, or correct the config.",
        )
    return full


def _build_and_load(
    build: Callable[[], nn.Module], state: Mapping[str, torch.Tensor], label: str
) -> nn.Module:
    """Build on the meta device and check sizes and names first, so that a config asking for a
    huge model is refused before any memory is allocated; then build for real and load."""
    with torch.device("meta"):
        reference = build()
    weights_bytes = sum(t.numel() * t.element_size() for t in state.values())
    model_bytes = sum(
        t.numel() * t.element_size()
        for t in itertools.chain(reference.parameters(), reference.buffers())
    )
    if model_bytes > 2 * weights_bytes + _BUILD_SLACK_BYTES:
        raise IntakeError(
            "weights_mismatch",
            f"Building {label} needs {model_bytes} bytes of parameters and buffers but the "
            f"weights are only {weights_bytes} bytes; send the config the weights were saved "
            "with.",
        )
    _match_state(reference, state, label, compare_values=False)
    model = build()
    _load_weights(model, state, label)
    return model


def _load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], label: str) -> None:
    full = _match_state(model, state, label, compare_values=True)
    float_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        # Keep the checkpoint's precision (e.g. bf16) instead of upcasting to the default.
        model.to(float_dtypes.pop())
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as exc:  # pragma: no cover - _match_state checks the same things
        raise IntakeError(
            "weights_mismatch",
            f"The weights do not fit {label} ({str(exc)[:300]}); send weights saved from a model "
            "built with the same architecture and config.",
        ) from None


def _dedupe_shared(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies for safetensors: identical views once, other overlaps cloned."""
    seen: dict[tuple[object, ...], str] = {}
    storages: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        ptr = tensor.untyped_storage().data_ptr()
        key = (ptr, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
        if key in seen and tensor.numel() > 0:
            continue
        seen[key] = name
        if ptr in storages and tensor.numel() > 0:
            tensor = tensor.clone()
        storages.add(ptr)
        out[name] = tensor.cpu().contiguous()
    return out


def _finish(
    model: nn.Module, arch: str | None, config: dict[str, Any], fmt: CheckpointFormat
) -> LoadedModel:
    for param in model.parameters():
        if param.is_floating_point() or param.is_complex():
            param.requires_grad_(True)
    try:
        groups = partition(model, "layer")
    except ValueError:
        raise IntakeError(
            "no_parameters",
            "The model has no trainable parameters, so there is no learning rate to tune; "
            "send a model with weights.",
        ) from None
    return LoadedModel(
        model=model,
        arch=arch,
        config=config,
        format=fmt,
        num_params=sum(p.numel() for p in model.parameters()),
        param_names=[name for name, _ in model.named_parameters()],
        partition=groups,
    )


# --- zip and tar based formats --------------------------------------------------------------


def _load_zip(
    source: Path,
    cap: int,
    arch: str | None,
    arch_config: Mapping[str, Any] | BaseModel | None,
    allow_pt2: bool,
) -> LoadedModel:
    try:
        with zipfile.ZipFile(source) as zf:
            members = list_zip_members(zf, source.stat().st_size, cap)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):
        raise unsupported("The zip archive is truncated or corrupt") from None
    kind = admitted_zip_kind((m.raw_name for m in members), arch, arch_config, allow_pt2=allow_pt2)
    if kind == "pt2":
        return _finish(load_pt2(source, cap), None, {}, "pt2")
    if kind == "torch_state_dict":
        return _load_torch_state_dict(source, arch, arch_config)
    return _load_hf_archive(source, cap)


def _load_hf(folder: Path, cap: int) -> LoadedModel:
    loaded = load_hf_folder(folder, cap)
    label = f"the {loaded.config.get('model_type')} model of config.json"
    model = _build_and_load(loaded.build, loaded.state_dict, label)
    return _finish(model, None, loaded.config, "hf")


def _load_hf_archive(source: Path, cap: int) -> LoadedModel:
    with tempfile.TemporaryDirectory(prefix="lrprobe-hf-") as tmp:
        chosen = extract_members(source, Path(tmp), max_bytes=cap, select=select_members)
        return _load_hf(find_model_folder(Path(tmp), chosen), cap)
