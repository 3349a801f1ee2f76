"""Torch-free pre-validation of uploads: what a file is, read from its content, never run.

Checkpoints (the worker's intake does the full fit check against the architecture at probe
time; this refuses early what it would refuse anyway, with the same codes):

- safetensors: the JSON header is parsed; tensor names, shapes and dtypes give the parameter
  count and a provisional per-layer grouping; ``lrprobe.arch``/``lrprobe.arch_config`` metadata
  name the architecture;
- zip archives, by member names: TorchScript (``code/``, ``constants.pkl``) is refused;
  ``torch.export`` (``archive_format``, ``models/model.json``) is ``pt2``; ``data.pkl`` is a
  ``torch.save`` file whose pickle is scanned opcode by opcode (not executed): any global
  beyond tensor rebuilding and ``OrderedDict`` means a pickled object, refused; ``config.json``
  with ``*.safetensors`` is a Hugging Face folder archive;
- tar archives (plain or compressed) of a Hugging Face folder;
- a raw pickle stream is refused; anything else is unsupported.

Datasets are sniffed cheaply: ``.npz`` (zip of ``.npy``), ``.npy``, ``.pt`` (zip ``torch.save``,
its pickle scanned as above), Parquet, CSV (UTF-8 text with a header line) and ``.bin`` token
streams.
"""

from __future__ import annotations

import ast
import bz2
import gzip
import io
import logging
import lzma
import math
import pickletools
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, cast

from lrprobe.service.errors import ServiceError, UnprocessableError, UnsupportedMediaTypeError
from lrprobe.service.json_limits import MAX_DEPTH, JsonLimitError, load_bounded

log = logging.getLogger(__name__)

ARCH_METADATA_KEY = "lrprobe.arch"
CONFIG_METADATA_KEY = "lrprobe.arch_config"
# safetensors' own cap on a header; above it a file is not read as safetensors at all.
SAFETENSORS_HEADER_FORMAT_CAP = 100_000_000
# Ours, far above any real model's (GPT-2's header is 15 KB; a 70B model's shard under 100 KB).
MAX_SAFETENSORS_HEADER = 8 << 20
MAX_SAFETENSORS_ENTRIES = 50_000
MAX_ARCH_NAME = 100
MAX_ARCH_CONFIG_BYTES = 64 << 10
MAX_CONFIG_JSON_BYTES = 1 << 20
# What the model row keeps of the tensor names: a summary, never the whole header.
MAX_SUMMARY_GROUPS = 256
MAX_SUMMARY_NAMES = 64
MAX_SUMMARY_NAME_CHARS = 500
MAX_ARCHIVE_MEMBERS = 10_000
MAX_PICKLE_BYTES = 64 << 20
# As the intake's archive checks (lrprobe.worker.intake.checkpoint_archives): weights barely
# compress.
MAX_EXPANSION_RATIO = 50
_RATIO_SLACK_BYTES = 1 << 20
# Headers of many small members add to what a tar decompresses to, beyond its members' sizes.
_STREAM_SLACK_BYTES = 16 << 20
_SAFE_FORMATS = "a .safetensors state dict with an architecture name"
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# Bits per element of safetensors' dtypes (the sub-byte float formats included).
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16,
    "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64,
    "U64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "C64": 64,
}  # fmt: skip
# What a corrupt file makes the standard library's readers raise (bad CRC, broken deflate,
# truncated streams, unsupported compression, a recursion bomb): all answered as a 4xx.
_PARSER_ERRORS = (
    zipfile.BadZipFile, zlib.error, tarfile.TarError, EOFError, OSError, NotImplementedError,
    RuntimeError, ValueError, OverflowError, RecursionError, KeyError, IndexError, TypeError,
    AttributeError, LookupError,
)  # fmt: skip

# What a state dict's pickle may reference: tensor rebuilding, storages, containers, dtypes.
_ALLOWED_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch.serialization", "_get_layout"),
        ("torch", "Size"),
        ("torch", "device"),
    }
)
_TORCH_STORAGES = frozenset(
    f"{kind}Storage"
    for kind in (
        "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
        "ComplexFloat", "ComplexDouble", "Untyped",
    )
)  # fmt: skip
_TORCH_DTYPES = frozenset(
    {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
     "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2"}
)  # fmt: skip


@dataclass(frozen=True)
class CheckpointInfo:
    format: str
    arch: str | None = None
    arch_config: dict[str, Any] = field(default_factory=dict)
    num_params: int = 0
    groups: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetInfo:
    format: str


# --- refusals, with the intake's codes ------------------------------------------------------


def _unsupported(reason: str) -> ServiceError:
    return UnsupportedMediaTypeError(
        f"{reason}; send {_SAFE_FORMATS}, a Hugging Face folder archive (config.json + "
        "safetensors), or a plain state dict saved with torch.save(model.state_dict()).",
        code="unsupported_checkpoint",
    )


def _pickle_refused(reason: str) -> ServiceError:
    return UnprocessableError(
        f"{reason}, and pickles can run code when loaded, so it was not opened; save "
        "model.state_dict() with safetensors.torch.save_file (or lrprobe's save_checkpoint) "
        "and send that with the architecture name.",
        code="pickle_refused",
    )


def _torchscript_refused() -> ServiceError:
    return UnprocessableError(
        "The file is a TorchScript archive, whose code would run when loaded; send "
        f"{_SAFE_FORMATS} (or a torch.export .pt2 where the operator enables it).",
        code="torchscript_refused",
    )


def _arch_not_applicable(what: str) -> ServiceError:
    return UnprocessableError(
        f"The checkpoint is {what}, which carries its own architecture; send it without "
        "arch and arch_config.",
        code="arch_not_applicable",
    )


# --- checkpoints ----------------------------------------------------------------------------


def _unsafe_archive(reason: str) -> ServiceError:
    return UnprocessableError(
        f"{reason}; send an archive of plain files with relative paths inside one folder.",
        code="unsafe_archive",
    )


def _check_member_name(raw: str) -> None:
    """The intake's rule (``safe_member_path``): relative, no ``..``, no NUL or backslash."""
    path = PurePosixPath(raw.removeprefix("./"))
    if "\x00" in raw or "\\" in raw:
        raise _unsafe_archive(f"The archive member {raw!r} has a NUL byte or backslash in its name")
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise _unsafe_archive(f"The archive member {raw!r} has an absolute path")
    if ".." in path.parts:
        raise _unsafe_archive(f"The archive member {raw!r} climbs out of the archive with '..'")


def _check_expansion(total: int, archive_size: int) -> None:
    if total > MAX_EXPANSION_RATIO * archive_size + _RATIO_SLACK_BYTES:
        raise _unsafe_archive(
            f"The archive expands {total // max(archive_size, 1)}-fold, which model weights "
            "never do (a zip bomb)"
        )


def _check_zip_members(zf: zipfile.ZipFile, archive_size: int) -> None:
    total = 0
    seen: set[str] = set()
    for info in zf.infolist():
        _check_member_name(info.filename)
        if info.filename in seen:
            raise _unsafe_archive(f"The archive holds {info.filename!r} twice")
        seen.add(info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise _unsafe_archive(f"The archive member {info.filename!r} is a link or special file")
        if info.flag_bits & 0x1:
            raise _unsafe_archive(f"The archive member {info.filename!r} is encrypted")
        total += info.file_size
    _check_expansion(total, archive_size)


def inspect_checkpoint(
    path: Path,
    *,
    arch: str | None = None,
    arch_config: dict[str, Any] | None = None,
    allow_pt2: bool = False,
) -> CheckpointInfo:
    """Classify the checkpoint at ``path``; raise a ``ServiceError`` with an intake code if the
    worker would refuse it. ``arch``/``arch_config`` (from the upload form) override the
    safetensors metadata."""
    if arch is not None:
        _check_arch_name(arch)
    try:
        return _inspect_checkpoint(path, arch, arch_config, allow_pt2)
    except ServiceError:
        raise
    except _PARSER_ERRORS as exc:
        log.info("checkpoint refused by a parser error: %r", exc)
        raise _unsupported(
            f"The file could not be read ({type(exc).__name__}: it is corrupt or truncated)"
        ) from None


def _check_arch_name(arch: str) -> None:
    if len(arch) > MAX_ARCH_NAME or not arch.isprintable():
        raise UnprocessableError(
            f"The architecture name must be 1-{MAX_ARCH_NAME} printable characters; send a "
            "registry name such as mlp.",
            code="invalid_arch_config",
        )


def _inspect_checkpoint(
    path: Path, arch: str | None, arch_config: dict[str, Any] | None, allow_pt2: bool
) -> CheckpointInfo:
    size = path.stat().st_size
    if size == 0:
        raise UnprocessableError(
            "The uploaded file is empty; send the checkpoint file.", code="empty_upload"
        )
    with path.open("rb") as f:
        head = f.read(512)
    if _looks_like_safetensors(head):
        return _inspect_safetensors(path, size, arch, arch_config)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _inspect_checkpoint_zip(path, arch, arch_config, allow_pt2)
    if _looks_like_tar(head):
        if arch is not None or arch_config is not None:
            raise _arch_not_applicable("a Hugging Face model archive")
        return _inspect_hf_tar(path)
    if _looks_like_pickle(head):
        raise _pickle_refused("The file is a raw pickle stream (or a legacy torch.save file)")
    raise _unsupported("The file is not a format lrprobe reads")


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= SAFETENSORS_HEADER_FORMAT_CAP


def _looks_like_tar(head: bytes) -> bool:
    return head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar"


def _looks_like_pickle(head: bytes) -> bool:
    return head[:1] == b"\x80" and head[1:2] in {bytes([v]) for v in range(2, 6)}


def _safetensors_header(raw: bytes, payload_size: int | None) -> dict[str, Any]:
    """Validate a safetensors header; ``payload_size`` (bytes after the header) if known.

    Bounded before it is parsed (size, entry count) and checked entry by entry as safetensors
    would: offsets are integers in order, and each tensor's bytes match its shape and dtype (so
    shapes cannot claim more parameters than the file holds)."""
    if len(raw) > MAX_SAFETENSORS_HEADER:
        raise _unsupported(
            f"The safetensors header is {len(raw)} bytes, over lrprobe's limit of "
            f"{MAX_SAFETENSORS_HEADER}"
        )
    if raw.count(b'"data_offsets"') > MAX_SAFETENSORS_ENTRIES:
        raise _unsupported(f"The safetensors file has more than {MAX_SAFETENSORS_ENTRIES} tensors")
    try:
        header = load_bounded(raw, max_bytes=MAX_SAFETENSORS_HEADER)
    except JsonLimitError as exc:
        raise _unsupported(f"The safetensors header was refused: {exc}") from None
    if not isinstance(header, dict):
        raise _unsupported("The safetensors header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _unsupported("The safetensors metadata is not a JSON object of strings")
            continue
        _, stop = _checked_entry(name, entry)
        end = max(end, stop)
        if payload_size is not None and stop > payload_size:
            break
    if payload_size is not None and end > payload_size:
        raise _unsupported("The safetensors file is truncated (its tensors end past the file)")
    if payload_size is not None and end < payload_size:
        # safetensors refuses such a file on load (its buffer is not covered); storing it would
        # keep bytes that no probe can use.
        raise _unsupported("The safetensors file has bytes after its last tensor")
    return header


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_entry(name: str, entry: Any) -> tuple[int, int]:
    """An entry's (begin, end) offsets, once its dtype, shape and offsets agree."""
    malformed = _unsupported(f"The safetensors entry {name[:200]!r} is malformed")
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
        raise _unsupported(
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
            raise _unsupported("The safetensors file is truncated (its header ends past the file)")
        header = _safetensors_header(f.read(length), size - 8 - length)
    metadata: dict[str, str] = header.pop("__metadata__", None) or {}
    shapes = {name: entry["shape"] for name, entry in header.items()}
    if not shapes:
        raise UnprocessableError(
            "The safetensors file holds no tensors; send the model's state dict.",
            code="unsupported_checkpoint",
            status=422,  # a checkpoint format, but empty: not the catalogue's 415
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
            raise UnprocessableError(
                f"The safetensors metadata {CONFIG_METADATA_KEY!r} is not a JSON object of at "
                f"most {MAX_ARCH_CONFIG_BYTES} bytes and {MAX_DEPTH} levels; "
                "send arch_config with the upload or re-save with save_checkpoint.",
                code="invalid_arch_config",
            )
    chosen_arch = arch if arch is not None else meta_arch
    if not chosen_arch:
        raise UnprocessableError(
            "A state dict holds only weights, and no architecture was given or stored in the "
            "file's metadata; send the architecture name (form field arch, and arch_config) "
            "with the weights.",
            code="arch_required",
        )
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


def _zip_names(path: Path) -> tuple[zipfile.ZipFile, list[str]]:
    try:
        zf = zipfile.ZipFile(path)
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise _unsupported("The zip archive is truncated or corrupt") from None
    if len(names) > MAX_ARCHIVE_MEMBERS:
        zf.close()
        raise _unsupported(f"The archive has more than {MAX_ARCHIVE_MEMBERS} members")
    return zf, names


def _inner(names: Iterable[str]) -> set[str]:
    """Member names below the archive's top folder (torch.save writes ``NAME/data.pkl``)."""
    return {str(PurePosixPath(*PurePosixPath(n).parts[1:])) for n in names if "/" in n}


def _inspect_checkpoint_zip(
    path: Path, arch: str | None, arch_config: dict[str, Any] | None, allow_pt2: bool
) -> CheckpointInfo:
    zf, names = _zip_names(path)
    with zf:
        _check_zip_members(zf, path.stat().st_size)
        inner = _inner(names)
        if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
            raise _torchscript_refused()
        if "archive_format" in inner or "models/model.json" in inner:
            if arch is not None or arch_config is not None:
                raise _arch_not_applicable("a torch.export archive")
            if not allow_pt2:
                raise UnprocessableError(
                    "torch.export .pt2 archives are not accepted on this deployment; send "
                    f"{_SAFE_FORMATS}.",
                    code="pt2_disabled",
                )
            return CheckpointInfo(format="pt2")
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if pickles:
            _scan_state_dict_pickle(zf, pickles[0])
            if not arch:
                raise UnprocessableError(
                    "A torch.save state dict holds only weights; send the architecture name "
                    "(form field arch, and arch_config) with it.",
                    code="arch_required",
                )
            return CheckpointInfo(
                format="torch_state_dict", arch=arch, arch_config=arch_config or {}
            )
        if any(PurePosixPath(n).name == "config.json" for n in names):
            if arch is not None or arch_config is not None:
                raise _arch_not_applicable("a Hugging Face model archive")
            return _hf_info(
                names,
                lambda n: zf.read(n) if zf.getinfo(n).file_size <= MAX_CONFIG_JSON_BYTES else b"",
            )
    raise _unsupported("The zip archive is neither a model folder nor a torch.save file")


class _CappedStream(io.RawIOBase):
    """A tar's decompressed stream that refuses to go past ``cap`` bytes, before reading them:
    tarfile reads a pax header whole, at the size the header declares, so a few hundred KB of
    gzip could otherwise make it hold gigabytes of zeros in memory."""

    def __init__(self, inner: Any, cap: int) -> None:
        self.inner = inner
        self.cap = cap
        self.pos = 0

    def _check(self, end: int) -> None:
        if end > self.cap:
            raise _unsafe_archive(
                f"The archive decompresses past {self.cap} bytes, far more than its size "
                "explains (a decompression bomb)"
            )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.cap - self.pos + 1
        self._check(self.pos + size if size > _STREAM_SLACK_BYTES else self.pos)
        data: bytes = self.inner.read(size)
        self.pos += len(data)
        self._check(self.pos)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence not in (io.SEEK_SET, io.SEEK_CUR):
            raise OSError("a compressed tar is not read from its end")
        target = offset if whence == io.SEEK_SET else self.pos + offset
        self._check(target)
        self.pos = self.inner.seek(target)
        return self.pos


@contextmanager
def _open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    with path.open("rb") as f:
        magic = f.read(6)
    opener: Any = open
    if magic.startswith(b"\x1f\x8b"):
        opener = gzip.open
    elif magic.startswith(b"BZh"):
        opener = bz2.open
    elif magic.startswith(b"\xfd7zXZ\x00"):
        opener = lzma.open
    cap = MAX_EXPANSION_RATIO * path.stat().st_size + _STREAM_SLACK_BYTES
    with opener(path, "rb") as raw:
        stream = _CappedStream(raw, cap)
        with tarfile.open(fileobj=stream, mode="r:") as tf:  # type: ignore[call-overload]
            yield tf


def _inspect_hf_tar(path: Path) -> CheckpointInfo:
    """The zip checks, for tar: names, links, duplicates, member count and expansion. Each
    header is checked before the next is read, so a compressed tar that declares huge members
    is refused before they are decompressed, and the decompressed stream itself is capped."""
    archive_size = path.stat().st_size
    members: list[str] = []
    seen: set[str] = set()
    config: dict[str, bytes] = {}
    total = 0
    try:
        with _open_tar(path) as tf:
            for member in tf:
                _check_member_name(member.name)
                if not (member.isfile() or member.isdir()):
                    raise _unsafe_archive(
                        f"The archive member {member.name!r} is a link or special file"
                    )
                name = member.name.removeprefix("./")
                if name in seen:
                    raise _unsafe_archive(f"The archive holds {member.name!r} twice")
                seen.add(name)
                members.append(member.name)
                if len(members) > MAX_ARCHIVE_MEMBERS:
                    raise _unsafe_archive(
                        f"The archive has more than {MAX_ARCHIVE_MEMBERS} members"
                    )
                total += member.size
                _check_expansion(total, archive_size)
                if member.isfile() and PurePosixPath(member.name).name == "config.json":
                    handle = tf.extractfile(member)
                    if handle is not None and member.size <= MAX_CONFIG_JSON_BYTES:
                        config[member.name] = handle.read(MAX_CONFIG_JSON_BYTES + 1)
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
        raise _unsupported("The archive is truncated or corrupt") from None
    return _hf_info(members, lambda n: config.get(n, b""))


def _hf_info(names: list[str], read: Any) -> CheckpointInfo:
    configs = [n for n in names if PurePosixPath(n).name == "config.json"]
    weights = [n for n in names if n.endswith(".safetensors")]
    if configs and not weights and any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in names):
        raise UnprocessableError(
            "The model folder has only pickled weights (pytorch_model.bin), which are never "
            "loaded; save it with save_pretrained(safe_serialization=True) and send that.",
            code="hf_invalid_model",
        )
    if not configs or not weights:
        raise _unsupported(
            "The archive is not a Hugging Face model folder with config.json and *.safetensors"
        )
    try:
        config = load_bounded(read(min(configs, key=len)), max_bytes=MAX_CONFIG_JSON_BYTES)
    except JsonLimitError as exc:
        raise _unsupported(f"The archive's config.json was refused: {exc}") from None
    if not isinstance(config, dict):
        raise _unsupported("The archive's config.json is not a JSON object")
    if _has_key(config, "auto_map"):
        raise UnprocessableError(
            "config.json has an 'auto_map', so the model needs its own Python code, which is "
            "never run here; send a model whose model_type is built into transformers, or "
            "safetensors weights for a built-in architecture.",
            code="hf_remote_code_refused",
        )
    return CheckpointInfo(format="hf", arch=None, arch_config=config)


def _has_key(node: Any, key: str) -> bool:
    if isinstance(node, dict):
        return key in node or any(_has_key(v, key) for v in node.values())
    if isinstance(node, list):
        return any(_has_key(v, key) for v in node)
    return False


def _scan_state_dict_pickle(zf: zipfile.ZipFile, name: str) -> None:
    """Refuse a torch.save pickle that references anything but tensors and containers.

    The opcodes are listed, never executed: a global import is the only way a pickle reaches
    code, so a pickle whose globals are all tensor-rebuilding functions cannot run any."""
    info = zf.getinfo(name)
    if info.file_size > MAX_PICKLE_BYTES:
        raise _pickle_refused("The torch.save file's pickle is unusually large")
    data = zf.read(name)
    for module, attr in _pickle_globals(data):
        if (module, attr) in _ALLOWED_GLOBALS:
            continue
        if module == "torch" and (attr in _TORCH_STORAGES or attr in _TORCH_DTYPES):
            continue
        raise _pickle_refused(
            f"The file holds pickled objects other than tensors (it references {module}.{attr}; "
            "for example a whole module saved with torch.save(model))"
        )


def _pickle_globals(data: bytes) -> list[tuple[str, str]]:
    """The (module, name) of every global a pickle imports, without unpickling it.

    ``STACK_GLOBAL`` takes its names from the stack, so pushes are followed just far enough to
    know them: strings pushed directly or fetched from the memo; anything else there (a name
    built at load time) is reported as unknown, which the caller refuses."""
    found: list[tuple[str, str]] = []
    recent: list[str | None] = []  # the last pushed values, None when not a known string
    memo: dict[int, str | None] = {}
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.append((module, attr))
                recent.append(None)
            elif name == "STACK_GLOBAL":
                pair = recent[-2:]
                if len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str):
                    found.append((pair[0], pair[1]))
                else:
                    found.append(("<unknown>", "<unknown>"))
                recent.append(None)
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                recent.append(str(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(cast(int, arg))] = recent[-1] if recent else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                recent.append(memo.get(int(cast(int, arg))))
            elif name in ("EXT1", "EXT2", "EXT4"):
                found.append(("copyreg", "extension"))
                recent.append(None)
            else:
                recent.append(None)
            del recent[:-2]
    except Exception:  # a malformed stream: refuse, never guess
        raise _pickle_refused("The torch.save file's pickle is malformed") from None
    return found


# --- datasets -------------------------------------------------------------------------------

DATASET_FORMATS = ("npz", "npy", "pt", "csv", "parquet", "bin")


def inspect_dataset(path: Path, filename: str) -> DatasetInfo:
    """Classify an uploaded dataset from its content (and, for text and token streams, its
    name); raise ``unsupported_data_format`` or ``pickle_refused``."""
    try:
        return _inspect_dataset(path, filename)
    except ServiceError:
        raise
    except _PARSER_ERRORS as exc:
        log.info("dataset refused by a parser error: %r", exc)
        raise _unsupported_data(
            f"The file could not be read ({type(exc).__name__}: it is corrupt or truncated)"
        ) from None


def _inspect_dataset(path: Path, filename: str) -> DatasetInfo:
    size = path.stat().st_size
    if size == 0:
        raise UnprocessableError(
            "The uploaded file is empty; send the dataset file.", code="empty_upload"
        )
    suffix = PurePosixPath(filename.lower()).suffix
    with path.open("rb") as f:
        head = f.read(65536)
        f.seek(max(0, size - 4))
        tail = f.read(4)
    if head.startswith(b"\x93NUMPY"):
        _check_npy_header(head)
        return DatasetInfo("npy")
    if head.startswith(b"PAR1") and tail == b"PAR1":
        return DatasetInfo("parquet")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        zf, names = _zip_names(path)
        with zf:
            pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
            if pickles:
                _scan_state_dict_pickle(zf, pickles[0])
                return DatasetInfo("pt")
            if names and all(n.endswith(".npy") for n in names):
                _check_zip_members(zf, size)
                for name in names:
                    with zf.open(name) as member:
                        _check_npy_header(member.read(65536))
                return DatasetInfo("npz")
        raise _unsupported_data("The zip archive is neither an .npz nor a torch.save file")
    if _looks_like_pickle(head):
        raise _pickle_refused("The file is a raw pickle stream")
    if suffix == ".bin":
        return DatasetInfo("bin")
    if suffix in (".csv", ".tsv", ".txt") or _looks_like_csv(head):
        if not _looks_like_csv(head):
            raise _unsupported_data("The file is not UTF-8 text with a header line")
        return DatasetInfo("csv")
    raise _unsupported_data("The file is not a dataset format lrprobe reads")


def _check_npy_header(head: bytes) -> None:
    """Refuse object arrays (their data is a pickle) from the ``.npy`` header, a Python dict
    literal read with ``ast.literal_eval`` (never evaluated as code)."""
    if not head.startswith(b"\x93NUMPY") or len(head) < 10:
        raise _unsupported_data("The .npy array header is truncated")
    major = head[6]
    width = 2 if major == 1 else 4
    length = int.from_bytes(head[8 : 8 + width], "little")
    raw = head[8 + width : 8 + width + length]
    try:
        header = ast.literal_eval(raw.decode("latin-1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise _unsupported_data("The .npy array header is malformed") from None
    descr = header.get("descr") if isinstance(header, dict) else None
    if descr is None or "O" in str(descr):
        raise _pickle_refused("The array holds Python objects (its data is a pickle)")


def _looks_like_csv(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # The sniffed prefix may end inside a multi-byte character.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    first = text.split("\n", 1)[0]
    return bool(first.strip()) and "\x00" not in text and any(c in first for c in ",;\t")


def _unsupported_data(reason: str) -> ServiceError:
    return UnsupportedMediaTypeError(
        f"{reason}; send .npz or .pt tensors (x, y), Parquet or CSV (feature columns + "
        "target), or a token stream (.npy or .bin of token ids).",
        code="unsupported_data_format",
    )
