"""Upload-time classification of a checkpoint: what it is, read from its content, never run.

The worker's intake does the full fit check against the architecture at probe time; this
refuses early what it would refuse anyway, with the same codes:

- safetensors: the JSON header is parsed, bounded and checked entry by entry; tensor names,
  shapes and dtypes give the parameter count and a provisional per-layer grouping;
  ``lrprobe.arch``/``lrprobe.arch_config`` metadata name the architecture;
- zip archives, by member names (:func:`~lrprobe.rules.checkpoint_formats.zip_kind`):
  TorchScript is refused; ``torch.export`` is ``pt2``; a ``torch.save`` file has its pickle
  scanned opcode by opcode (:mod:`~lrprobe.rules.pickle_scan`); a Hugging Face folder archive
  has its ``config.json`` checked (:mod:`~lrprobe.rules.hf_config`);
- tar archives (plain or compressed) of a Hugging Face folder, under the same member rules
  (:mod:`~lrprobe.rules.archives`);
- a raw pickle stream is refused; anything else is unsupported.
"""

from __future__ import annotations

import logging
import math
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lrprobe.rules.archives import list_tar_members, list_zip_members, open_tar
from lrprobe.rules.checkpoint_formats import (
    ARCH_METADATA_KEY,
    CONFIG_METADATA_KEY,
    admitted_zip_kind,
    arch_required,
    check_no_arch,
    file_kind,
    unsupported,
)
from lrprobe.rules.errors import RuleError
from lrprobe.rules.hf_config import CONFIG_NAME, MAX_CONFIG_BYTES, parse_config, select_members
from lrprobe.rules.json_limits import MAX_DEPTH, JsonLimitError, load_bounded
from lrprobe.rules.pickle_scan import scan_state_dict_pickle

log = logging.getLogger(__name__)

# Ours, far above any real model's (GPT-2's header is 15 KB; a 70B model's shard under 100 KB).
MAX_SAFETENSORS_HEADER = 8 << 20
MAX_SAFETENSORS_ENTRIES = 50_000
MAX_ARCH_NAME = 100
MAX_ARCH_CONFIG_BYTES = 64 << 10
# What the model row keeps of the tensor names: a summary, never the whole header.
MAX_SUMMARY_GROUPS = 256
MAX_SUMMARY_NAMES = 64
MAX_SUMMARY_NAME_CHARS = 500
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# Bits per element of safetensors' dtypes (the sub-byte float formats included).
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16,
    "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64,
    "U64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "C64": 64,
}  # fmt: skip
# What a corrupt file makes the standard library's readers raise (bad CRC, broken deflate,
# truncated streams, unsupported compression, a recursion bomb): all answered as a 4xx.
PARSER_ERRORS = (
    zipfile.BadZipFile, zlib.error, tarfile.TarError, EOFError, OSError, NotImplementedError,
    RuntimeError, ValueError, OverflowError, RecursionError, KeyError, IndexError, TypeError,
    AttributeError, LookupError,
)  # fmt: skip


@dataclass(frozen=True)
class CheckpointInfo:
    format: str
    arch: str | None = None
    arch_config: dict[str, Any] = field(default_factory=dict)
    num_params: int = 0
    groups: dict[str, Any] = field(default_factory=dict)


def inspect_checkpoint(
    path: Path,
    *,
    arch: str | None = None,
    arch_config: dict[str, Any] | None = None,
    allow_pt2: bool = False,
) -> CheckpointInfo:
    """Classify the checkpoint at ``path``; raise a ``RuleError`` with the intake's code if the
    worker would refuse it. ``arch``/``arch_config`` (from the upload form) override the
    safetensors metadata."""
    if arch is not None:
        _check_arch_name(arch)
    try:
        return _inspect_checkpoint(path, arch, arch_config, allow_pt2)
    except RuleError:
        raise
    except PARSER_ERRORS as exc:
        log.info("checkpoint refused by a parser error: %r", exc)
        raise unsupported(
            f"The file could not be read ({type(exc).__name__}: it is corrupt or truncated)"
        ) from None


def _check_arch_name(arch: str) -> None:
    if len(arch) > MAX_ARCH_NAME or not arch.isprintable():
        raise RuleError(
            "invalid_arch_config",
            f"The architecture name must be 1-{MAX_ARCH_NAME} printable characters; send a "
            "registry name such as mlp.",
        )


def _inspect_checkpoint(
    path: Path, arch: str | None, arch_config: dict[str, Any] | None, allow_pt2: bool
) -> CheckpointInfo:
    size = path.stat().st_size
    if size == 0:
        raise RuleError("empty_upload", "The uploaded file is empty; send the checkpoint file.")
    with path.open("rb") as f:
        head = f.read(512)
    kind = file_kind(head)
    if kind == "safetensors":
        return _inspect_safetensors(path, size, arch, arch_config)
    if kind == "zip":
        return _inspect_checkpoint_zip(path, arch, arch_config, allow_pt2)
    check_no_arch("a Hugging Face model archive", arch, arch_config)
    return _inspect_hf_tar(path)


def _safetensors_header(raw: bytes, payload_size: int | None) -> dict[str, Any]:
    """Validate a safetensors header; ``payload_size`` (bytes after the header) if known.

    Bounded before it is parsed (size, entry count) and checked entry by entry as safetensors
    would: offsets are integers in order, and each tensor's bytes match its shape and dtype (so
    shapes cannot claim more parameters than the file holds)."""
    if len(raw) > MAX_SAFETENSORS_HEADER:
        raise unsupported(
            f"The safetensors header is {len(raw)} bytes, over lrprobe's limit of "
            f"{MAX_SAFETENSORS_HEADER}"
        )
    if raw.count(b'"data_offsets"') > MAX_SAFETENSORS_ENTRIES:
        raise unsupported(f"The safetensors file has more than {MAX_SAFETENSORS_ENTRIES} tensors")
    try:
        header = load_bounded(raw, max_bytes=MAX_SAFETENSORS_HEADER)
    except JsonLimitError as exc:
        raise unsupported(f"The safetensors header was refused: {exc}") from None
    if not isinstance(header, dict):
        raise unsupported("The safetensors header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise unsupported("The safetensors metadata is not a JSON object of strings")
            continue
        _, stop = _checked_entry(name, entry)
        end = max(end, stop)
        if payload_size is not None and stop > payload_size:
            break
    if payload_size is not None and end > payload_size:
        raise unsupported("The safetensors file is truncated (its tensors end past the file)")
    if payload_size is not None and end < payload_size:
        # safetensors refuses such a file on load (its buffer is not covered); storing it would
        # keep bytes that no probe can use.
        raise unsupported("The safetensors file has bytes after its last tensor")
    return header


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_entry(name: str, entry: Any) -> tuple[int, int]:
    """An entry's (begin, end) offsets, once its dtype, shape and offsets agree."""
    malformed = unsupported(f"The safetensors entry {name[:200]!r} is malformed")
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        raise malformed
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise malformed
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets)):
        raise malformed
    begin, stop = offsets
    if not 0 <= begin <= stop:
        raise malformed
    bits = _DTYPE_BITS.get(entry["dtype"])
    if bits is not None and math.prod(shape) * bits != (stop - begin) * 8:
        raise unsupported(
            f"The safetensors entry {name[:200]!r} holds {stop - begin} bytes, which is not its "
            f"shape {shape[:8]} of {entry['dtype']}"
        )
    if bits is None and math.prod(shape) > (stop - begin) * 8:
        raise malformed
    return begin, stop


def _inspect_safetensors(
    path: Path, size: int, arch: str | None, arch_config: dict[str, Any] | None
) -> CheckpointInfo:
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if 8 + length > size:
            raise unsupported("The safetensors file is truncated (its header ends past the file)")
        header = _safetensors_header(f.read(length), size - 8 - length)
    metadata: dict[str, str] = header.pop("__metadata__", None) or {}
    shapes = {name: entry["shape"] for name, entry in header.items()}
    if not shapes:
        raise RuleError(
            "unsupported_checkpoint",
            "The safetensors file holds no tensors; send the model's state dict.",
        )
    meta_arch = metadata.get(ARCH_METADATA_KEY)
    if meta_arch is not None and arch is None:
        _check_arch_name(meta_arch)
    chosen_config = arch_config
    raw_config = metadata.get(CONFIG_METADATA_KEY)
    if chosen_config is None and raw_config is not None and (arch is None or arch == meta_arch):
        try:
            chosen_config = load_bounded(raw_config, max_bytes=MAX_ARCH_CONFIG_BYTES)
        except JsonLimitError:
            chosen_config = None
        if not isinstance(chosen_config, dict):
            raise RuleError(
                "invalid_arch_config",
                f"The safetensors metadata {CONFIG_METADATA_KEY!r} is not a JSON object of at "
                f"most {MAX_ARCH_CONFIG_BYTES} bytes and {MAX_DEPTH} levels; "
                "send arch_config with the upload or re-save with save_checkpoint.",
            )
    chosen_arch = arch if arch is not None else meta_arch
    if not chosen_arch:
        raise arch_required("form field arch, and arch_config")
    return CheckpointInfo(
        format="safetensors",
        arch=chosen_arch,
        arch_config=chosen_config or {},
        num_params=_count_params(shapes),
        groups=_layer_groups(shapes),
    )


def _count_params(shapes: dict[str, list[int]]) -> int:
    # Bounded by the file's size: every shape was checked against its tensor's bytes.
    return sum(math.prod(shape) for name, shape in shapes.items() if not _is_buffer(name))


def _is_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in _BUFFER_SUFFIXES


def _layer_groups(shapes: dict[str, list[int]]) -> dict[str, list[str]]:
    """Provisional per-layer groups: tensors grouped by the module path that owns them. A
    summary: at most ``MAX_SUMMARY_GROUPS`` groups of ``MAX_SUMMARY_NAMES`` names each (the
    probe's partition, computed by the worker from the weights, is authoritative)."""
    groups: dict[str, list[str]] = {}
    for name in shapes:
        if not _is_buffer(name) and len(name) <= MAX_SUMMARY_NAME_CHARS:
            owner = name.rsplit(".", 1)[0] if "." in name else name
            if owner not in groups and len(groups) >= MAX_SUMMARY_GROUPS:
                continue
            names = groups.setdefault(owner, [])
            if len(names) < MAX_SUMMARY_NAMES:
                names.append(name)
    return groups


def _inspect_checkpoint_zip(
    path: Path, arch: str | None, arch_config: dict[str, Any] | None, allow_pt2: bool
) -> CheckpointInfo:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise unsupported("The zip archive is truncated or corrupt") from None
    with zf:
        members = list_zip_members(zf, path.stat().st_size, None)
        names = [m.raw_name for m in members]
        kind = admitted_zip_kind(names, arch, arch_config, allow_pt2=allow_pt2)
        if kind == "pt2":
            return CheckpointInfo(format="pt2")
        if kind == "torch_state_dict":
            pickle = next(m.raw_name for m in members if m.path.name == "data.pkl")
            scan_state_dict_pickle(zf, pickle)
            if not arch:
                raise arch_required("form field arch, and arch_config")
            return CheckpointInfo(
                format="torch_state_dict", arch=arch, arch_config=arch_config or {}
            )
        by_path = {m.path: m for m in members}

        def read(member: PurePosixPath) -> bytes:
            info = by_path[member]
            return zf.read(info.raw_name) if info.size <= MAX_CONFIG_BYTES else b""

        return _hf_info(list(by_path), read)


def _inspect_hf_tar(path: Path) -> CheckpointInfo:
    """The zip checks, for tar: each header is checked before the next is read, so a
    compressed tar that declares huge members is refused before they are decompressed, and the
    decompressed stream itself is capped."""
    try:
        with open_tar(path) as tf:
            members = list_tar_members(tf, path.stat().st_size, None)
            infos = {member.path: info for member, info in members}

            def read(member: PurePosixPath) -> bytes:
                info = infos[member]
                handle = tf.extractfile(info) if info.size <= MAX_CONFIG_BYTES else None
                return handle.read(MAX_CONFIG_BYTES + 1) if handle is not None else b""

            return _hf_info(list(infos), read)
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error):
        raise unsupported("The archive is truncated or corrupt") from None


def _hf_info(paths: list[PurePosixPath], read: Callable[[PurePosixPath], bytes]) -> CheckpointInfo:
    chosen = select_members(paths)
    config = parse_config(read(next(p for p in chosen if p.name == CONFIG_NAME)))
    return CheckpointInfo(format="hf", arch=None, arch_config=config)
