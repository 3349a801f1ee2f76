"""What a checkpoint is, read from its content (never its name), and the refusals that every
format check shares.

The service sniffs an upload with these at ``POST /v1/models``; the worker's intake sniffs the
same file with them again before it loads anything, so both refuse the same files with the same
code and sentence.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Literal

from lrprobe.rules.errors import RuleError

ARCH_METADATA_KEY = "lrprobe.arch"
CONFIG_METADATA_KEY = "lrprobe.arch_config"
SAFETENSORS_HEADER_FORMAT_CAP = 100_000_000
"""safetensors' own cap on a header; above it a file is not read as safetensors at all."""

SAFE_FORMATS = "a .safetensors state dict with an architecture name"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")

FileKind = Literal["safetensors", "zip", "tar"]
ZipKind = Literal["torchscript", "pt2", "torch_state_dict", "hf", "unknown"]


def looks_like_safetensors(head: bytes) -> bool:
    """An 8-byte little-endian header length in safetensors' range, then a JSON object."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= SAFETENSORS_HEADER_FORMAT_CAP


def looks_like_zip(head: bytes) -> bool:
    return head.startswith(_ZIP_MAGIC)


def looks_like_tar(head: bytes) -> bool:
    """A tar, or a gzip/bzip2/xz stream (read as a compressed tar; anything else in it fails)."""
    return head.startswith(_COMPRESSED_MAGIC) or head[257:262] == b"ustar"


def looks_like_pickle(head: bytes) -> bool:
    """A pickle of protocol 2-5 (what legacy ``torch.save`` files start with)."""
    return head[:1] == b"\x80" and head[1:2] in {bytes([v]) for v in range(2, 6)}


def file_kind(head: bytes) -> FileKind:
    """What a checkpoint file is, from its first 512 bytes; a raw pickle stream and anything
    unknown are refused."""
    if looks_like_safetensors(head):
        return "safetensors"
    if looks_like_zip(head):
        return "zip"
    if looks_like_tar(head):
        return "tar"
    if looks_like_pickle(head):
        raise pickle_refused("The file is a raw pickle stream (or a legacy torch.save file)")
    raise unsupported("The file is not a format lrprobe reads")


def zip_kind(names: Iterable[str]) -> ZipKind:
    """What a zip holds, from its member names alone.

    ``torch.save`` and ``torch.jit.save`` write every member under one top folder
    (``NAME/data.pkl``); TorchScript adds ``code/`` and ``constants.pkl``, ``torch.export``
    ``archive_format`` or ``models/model.json``. A ``config.json`` anywhere makes a Hugging Face
    folder archive.
    """
    paths = [PurePosixPath(name.removeprefix("./")) for name in names]
    inner = {PurePosixPath(*p.parts[1:]) for p in paths if len(p.parts) > 1}
    inner_names = {str(p) for p in inner}
    if "constants.pkl" in inner_names or any(p.parts[0] == "code" for p in inner):
        return "torchscript"
    if "archive_format" in inner_names or "models/model.json" in inner_names:
        return "pt2"
    if "data.pkl" in inner_names:
        return "torch_state_dict"
    if any(p.name == "config.json" for p in paths):
        return "hf"
    return "unknown"


def admitted_zip_kind(
    names: Iterable[str], arch: str | None, arch_config: object, *, allow_pt2: bool
) -> ZipKind:
    """:func:`zip_kind`, with the refusals every reader of a zip makes: TorchScript; a
    ``torch.export`` archive where the deployment has them off; an architecture sent with a
    format that carries its own; a zip that is none of these."""
    kind = zip_kind(names)
    if kind == "torchscript":
        raise torchscript_refused()
    if kind == "pt2":
        check_no_arch("a torch.export archive", arch, arch_config)
        if not allow_pt2:
            raise pt2_disabled()
    if kind == "hf":
        check_no_arch("a Hugging Face model archive", arch, arch_config)
    if kind == "unknown":
        raise unsupported("The zip archive is neither a model folder nor a torch.save file")
    return kind


def unsupported(reason: str) -> RuleError:
    return RuleError(
        "unsupported_checkpoint",
        f"{reason}; send {SAFE_FORMATS}, a Hugging Face folder or folder archive (config.json "
        "+ safetensors), or a plain state dict saved with torch.save(model.state_dict()).",
    )


def pickle_refused(reason: str) -> RuleError:
    return RuleError(
        "pickle_refused",
        f"{reason}, and pickles can run code when loaded, so it was not opened; save "
        "model.state_dict() with safetensors.torch.save_file (or lrprobe's save_checkpoint) "
        "and send that with the architecture name.",
    )


def torchscript_refused() -> RuleError:
    return RuleError(
        "torchscript_refused",
        "The file is a TorchScript archive, whose code would run when loaded; send "
        f"{SAFE_FORMATS} (or a torch.export .pt2 where the operator enables it).",
    )


def pt2_disabled() -> RuleError:
    return RuleError(
        "pt2_disabled",
        "torch.export .pt2 archives are off by default (their loader is opt-in); send "
        f"{SAFE_FORMATS}, or enable them: `lrprobe probe --allow-pt2` on your own machine, "
        "LRPROBE_ALLOW_PT2=true on a service you run.",
    )


def check_no_arch(what: str, arch: str | None, arch_config: object) -> None:
    """Formats that carry their own architecture take no ``arch``/``arch_config``."""
    if arch is not None or arch_config is not None:
        raise RuleError(
            "arch_not_applicable",
            f"The checkpoint is {what}, which carries its own architecture; send it without "
            "arch and arch_config.",
        )


def arch_required(where: str) -> RuleError:
    return RuleError(
        "arch_required",
        "A state dict holds only weights, and no architecture was given or stored in the "
        f"file's metadata; send the architecture name ({where}) with the weights.",
    )
