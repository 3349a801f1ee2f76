"""Safe reading of user-supplied zip and tar archives: the service lists an uploaded archive
with these rules, the worker's intake lists it again and extracts it.

Every member name is checked before anything is written: no absolute paths, no ``..``, no
backslashes or drive letters (they mean something else on another OS), no duplicates (two
readers may pick different copies), no links or device files (they point outside the target
folder), no encrypted members. Sizes are checked twice: the declared total before extracting
(cheap refusal of zip bombs, including a ratio cap against archives that expand far beyond
their size), and the bytes actually written while streaming (declared sizes can lie). A
compressed tar is read through a stream capped at that same ratio, so what tarfile reads whole
(a pax header, at the size it declares) cannot exhaust memory either.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from lrprobe.rules.errors import RuleError

MAX_MEMBERS = 10_000
"""More members than any model folder has; stops archives built to exhaust the file system."""

MAX_EXPANSION_RATIO = 50
"""Weights barely compress; an archive that expands further than this is a bomb."""

_RATIO_SLACK_BYTES = 1 << 20
_STREAM_SLACK_BYTES = 16 << 20  # tar headers of many small members, beyond their sizes
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveMember:
    """A regular file in an archive, under a validated relative POSIX path."""

    path: PurePosixPath
    size: int
    raw_name: str


def _unsafe(message: str) -> RuleError:
    return RuleError(
        "unsafe_archive",
        f"{message}; send an archive of plain files with relative paths inside one folder.",
    )


def safe_member_path(raw_name: str) -> PurePosixPath:
    """``raw_name`` as a relative path, or an ``unsafe_archive`` error saying why not."""
    if "\x00" in raw_name or "\\" in raw_name:
        raise _unsafe(f"The archive member {raw_name!r} has a NUL byte or backslash in its name")
    name = raw_name
    while name.startswith("./"):
        name = name[2:]
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise _unsafe(f"The archive member {raw_name!r} has an absolute path")
    if any(part == ".." for part in path.parts):
        raise _unsafe(f"The archive member {raw_name!r} climbs out of the archive with '..'")
    if not path.parts:
        raise _unsafe(f"The archive member {raw_name!r} has an empty name")
    return path


def _check_totals(total: int, count: int, archive_size: int, max_bytes: int | None) -> None:
    if count > MAX_MEMBERS:
        raise _unsafe(f"The archive has more than {MAX_MEMBERS} members")
    if max_bytes is not None and total > max_bytes:
        raise RuleError(
            "checkpoint_too_large",
            f"The archive expands to more than {max_bytes} bytes; send a smaller model or ask "
            "the operator to raise the size limit.",
        )
    if total > MAX_EXPANSION_RATIO * archive_size + _RATIO_SLACK_BYTES:
        raise _unsafe(
            f"The archive expands {total // max(archive_size, 1)}-fold, which model weights "
            "never do (a zip bomb)"
        )


def list_zip_members(
    zf: zipfile.ZipFile, archive_size: int, max_bytes: int | None
) -> list[ArchiveMember]:
    """Validate every member of an open zip and return its regular files. ``max_bytes``: the
    most its files may expand to (``None``: only the expansion ratio is checked)."""
    infos = zf.infolist()
    seen: set[PurePosixPath] = set()
    members: list[ArchiveMember] = []
    total = 0
    for info in infos:
        path = safe_member_path(info.filename)
        if path in seen:
            raise _unsafe(f"The archive holds {info.filename!r} twice")
        seen.add(path)
        file_type = stat.S_IFMT(info.external_attr >> 16)
        if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
            raise _unsafe(f"The archive member {info.filename!r} is a link or special file")
        if info.flag_bits & 0x1:
            raise _unsafe(f"The archive member {info.filename!r} is encrypted")
        if info.is_dir():
            continue
        total += info.file_size
        members.append(ArchiveMember(path, info.file_size, info.filename))
    _check_totals(total, len(infos), archive_size, max_bytes)
    return members


def _iter_tar_members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        info = tf.next()
        if info is None:
            return
        yield info


def list_tar_members(
    tf: tarfile.TarFile, archive_size: int, max_bytes: int | None
) -> list[tuple[ArchiveMember, tarfile.TarInfo]]:
    """Validate every member of an open tar and return its regular files (``max_bytes`` as for
    :func:`list_zip_members`).

    Members are read one header at a time and the running totals checked before moving on, so
    a compressed tar that declares huge members is refused before it is decompressed.
    """
    seen: set[PurePosixPath] = set()
    members: list[tuple[ArchiveMember, tarfile.TarInfo]] = []
    total = 0
    count = 0
    for info in _iter_tar_members(tf):
        count += 1
        path = safe_member_path(info.name)
        if path in seen:
            raise _unsafe(f"The archive holds {info.name!r} twice")
        seen.add(path)
        if info.isdir():
            _check_totals(total, count, archive_size, max_bytes)
            continue
        if not info.isreg():
            raise _unsafe(f"The archive member {info.name!r} is a link or special file")
        total += info.size
        _check_totals(total, count, archive_size, max_bytes)
        members.append((ArchiveMember(path, info.size, info.name), info))
    return members


def _copy_capped(src: IO[bytes], dest: Path, declared: int, budget: list[int]) -> None:
    written = 0
    with dest.open("xb") as out:
        while chunk := src.read(_COPY_CHUNK):
            written += len(chunk)
            budget[0] -= len(chunk)
            if written > declared or budget[0] < 0:
                raise _unsafe(f"The archive member {dest.name!r} is larger than it declares")
            out.write(chunk)


def extract_members(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int,
    select: Callable[[list[PurePosixPath]], set[PurePosixPath]],
) -> list[PurePosixPath]:
    """Validate all of ``archive`` (zip or tar, maybe compressed), then extract the members
    that ``select`` picks from the list of regular files into ``dest``.

    Raises:
        RuleError: ``unsafe_archive``, ``checkpoint_too_large`` or ``unsupported_checkpoint``.
    """
    archive_size = archive.stat().st_size
    budget = [max_bytes]
    dest_root = dest.resolve()

    def target_for(path: PurePosixPath) -> Path:
        target = (dest_root / Path(*path.parts)).resolve()
        if not target.is_relative_to(dest_root):
            raise _unsafe(f"The archive member {str(path)!r} would land outside the folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                members = list_zip_members(zf, archive_size, max_bytes)
                chosen = select([m.path for m in members])
                for member in members:
                    if member.path in chosen:
                        with zf.open(member.raw_name) as src:
                            _copy_capped(src, target_for(member.path), member.size, budget)
                return sorted(chosen)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise RuleError(
                "unsupported_checkpoint",
                f"The zip archive is truncated or corrupt ({exc}); send the complete archive.",
            ) from None
    with open_tar(archive) as tf:
        tar_members = list_tar_members(tf, archive_size, max_bytes)
        chosen = select([m.path for m, _ in tar_members])
        for member, info in tar_members:
            if member.path in chosen:
                data = tf.extractfile(info)
                if data is None:  # pragma: no cover - isreg() members always have data
                    raise _unsafe(f"The archive member {info.name!r} has no data")
                with data:
                    _copy_capped(data, target_for(member.path), member.size, budget)
        return sorted(chosen)


class _CappedStream(io.RawIOBase):
    """A tar's decompressed stream that refuses to go past ``cap`` bytes, checked before a
    large read or a seek is done."""

    def __init__(self, inner: Any, cap: int) -> None:
        self.inner = inner
        self.cap = cap
        self.pos = 0

    def _check(self, end: int) -> None:
        if end > self.cap:
            raise _unsafe(
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


def _decompressor(archive: Path) -> Any:
    with archive.open("rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open
    if magic.startswith(b"BZh"):
        return bz2.open
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open
    return open


@contextmanager
def open_tar(archive: Path) -> Iterator[tarfile.TarFile]:
    """``archive`` as a tar, decompressed (gzip, bzip2, xz) through the capped stream."""
    cap = MAX_EXPANSION_RATIO * archive.stat().st_size + _STREAM_SLACK_BYTES
    try:
        with _decompressor(archive)(archive, "rb") as raw:
            stream = _CappedStream(raw, cap)
            with tarfile.open(fileobj=stream, mode="r:") as tf:
                yield tf
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise RuleError(
            "unsupported_checkpoint",
            f"The archive could not be read as a zip or tar, or is truncated ({exc}); send the "
            "complete .zip or .tar.gz of a model folder, or a single .safetensors file.",
        ) from None
