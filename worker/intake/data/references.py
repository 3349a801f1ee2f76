"""``open_dataset``: turn a data reference from a job spec into a validated ``Dataset``.

References (see ``formats`` for the file formats and their options):

- ``builtin://NAME`` — ``breast_cancer``, ``diabetes``, ``digits`` (``?shape=image`` for
  ``1×8×8`` images), ``iris``, ``wine``, ``mnist1d`` (see ``builtin``);
- ``file:///ABS/PATH`` — a file or an image folder under one of the policy's data roots, by its
  written path and by its real path; ``..`` is refused; options go in the query
  (``file:///data/t.csv?target=label``);
- ``https://HOST/PATH`` — an allow-listed host whose addresses are all public (or allowed by the
  policy); downloaded, size-capped, to the cache; options go in the fragment
  (``https://h/t.csv#target=label``) because the query belongs to the server;
- ``http://`` — only where the policy sets ``allow_insecure_http`` and the host is allow-listed;
- ``s3://BUCKET/KEY``, ``gs://BUCKET/KEY`` — an allow-listed bucket, through fsspec (needs the
  ``s3``/``gcs`` extra); options in the fragment.

Any other scheme (``ftp:``, ``javascript:``, ``data:``, a bare path) is refused.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import SplitResult, unquote

from lrprobe.rules.data_refs import builtin_name, check_local_path, file_path, split_reference
from lrprobe.worker.intake.data.builtin import load_builtin
from lrprobe.worker.intake.data.dataset import MIN_EXAMPLES, Dataset
from lrprobe.worker.intake.data.formats import ReadRequest, format_for, read_data_file
from lrprobe.worker.intake.data.images import read_image_folder
from lrprobe.worker.intake.data.options import DataOptions, parse_options
from lrprobe.worker.intake.data.policy import (
    DataPolicy,
    Resolver,
    is_under_real_roots,
    system_resolve,
)
from lrprobe.worker.intake.data.remote import fetch_remote
from lrprobe.worker.intake.errors import IntakeError, intake_errors

SCHEMES = ("builtin", "file", "https", "http", "s3", "gs")
REMOTE_SCHEMES = ("https", "http", "s3", "gs")


@intake_errors
def open_dataset(
    uri: str,
    policy: DataPolicy,
    *,
    block_size: int | None = None,
    min_examples: int = MIN_EXAMPLES,
    resolve: Resolver = system_resolve,
) -> Dataset:
    """Load and validate the dataset that ``uri`` names, within what ``policy`` allows.

    ``block_size``: the context length for token streams (may also be given in the reference).
    ``min_examples``: fewer examples (windows, for tokens) is an error.
    ``resolve``: host name → addresses; the system resolver unless a test replaces it.

    Raises ``IntakeError`` for every reference or data problem; nothing else escapes for bad
    input.
    """
    parts = split_reference(uri, SCHEMES)
    if parts.scheme == "builtin":
        name = builtin_name(parts)
        options = DataOptions(f"builtin://{name}", parse_options(parts.query, parts.fragment))
        return load_builtin(name, options, min_examples=min_examples)
    if parts.scheme == "file":
        return _open_file(parts, policy, block_size, min_examples)
    return _open_remote(parts, policy, block_size, min_examples, resolve)


def _open_file(
    parts: SplitResult, policy: DataPolicy, block_size: int | None, min_examples: int
) -> Dataset:
    path = file_path(parts)
    real = check_local_path(path, policy.roots)
    options = DataOptions(path.name or str(path), parse_options(parts.query, parts.fragment))
    request = ReadRequest(
        name=path.name or str(path),
        options=options,
        max_bytes=policy.max_bytes,
        min_examples=min_examples,
        block_size=block_size,
    )
    with _os_errors(path):
        info = os.stat(real)
    if stat.S_ISDIR(info.st_mode):

        def check_directory(directory: Path) -> None:
            if not is_under_real_roots(Path(os.path.realpath(directory)), policy):
                raise IntakeError(
                    "data_ref_refused",
                    f"{directory} leads outside the data roots; copy the images under a data "
                    "root instead of linking to them.",
                )

        return read_image_folder(real, request, lambda p: _open_checked(p, policy), check_directory)
    fmt = format_for(path.suffix, options)
    with _open_checked(real, policy) as handle:
        return read_data_file(handle, fmt, request)


@contextlib.contextmanager
def _os_errors(path: Path) -> Iterator[None]:
    """A missing or unreadable ``path`` as the intake's error (stat and open say the same)."""
    try:
        yield
    except FileNotFoundError:
        raise IntakeError(
            "data_not_found", f"There is no file {path}; check the path in the data reference."
        ) from None
    except OSError as exc:
        raise IntakeError("data_unreadable", f"{path} cannot be read ({exc.strerror}).") from None


@contextlib.contextmanager
def _open_checked(path: Path, policy: DataPolicy) -> Iterator[BinaryIO]:
    """Open a regular file, refusing it if it is, or has become, something outside the roots.

    The check that counts is made on the opened descriptor (its real path, or its device and
    inode), so swapping a symbolic link in after ``check_local_path`` gains nothing.
    """
    # O_NONBLOCK: opening a named pipe must not wait for a writer (it is refused just below)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    real = Path(os.path.realpath(path))
    if not is_under_real_roots(real, policy):
        raise IntakeError(
            "data_ref_refused",
            f"{path.name} leads outside the data roots; copy the data under a data root.",
        )
    with _os_errors(path):
        fd = os.open(real, flags)
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise IntakeError(
                "unsupported_data_format", f"{path} is not a regular file; send a data file."
            )
        _check_descriptor(fd, real, opened, policy)
        if opened.st_size > policy.max_bytes:
            raise IntakeError(
                "data_too_large",
                f"{path.name} has {opened.st_size} bytes, more than this deployment's limit "
                f"of {policy.max_bytes}; send a smaller sample.",
            )
        yield handle


def _check_descriptor(fd: int, real: Path, opened: os.stat_result, policy: DataPolicy) -> None:
    proc = Path(f"/proc/self/fd/{fd}")
    if proc.exists():
        where = Path(os.path.realpath(proc))
        inside = is_under_real_roots(where, policy)
    else:
        current = os.stat(real, follow_symlinks=False)
        inside = (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)
    if not inside:
        raise IntakeError(
            "data_ref_refused",
            f"{real.name} changed while it was opened and now leads outside the data roots; "
            "send the reference again once the data is in place.",
        )


def _open_remote(
    parts: SplitResult,
    policy: DataPolicy,
    block_size: int | None,
    min_examples: int,
    resolve: Resolver,
) -> Dataset:
    url = parts._replace(fragment="").geturl()
    name = unquote(parts.path.rsplit("/", 1)[-1]) or parts.netloc
    options = DataOptions(name, parse_options(parts.fragment))
    fmt = format_for(Path(name).suffix, options)
    local = fetch_remote(url, policy, resolve=resolve)
    request = ReadRequest(
        name=name,
        options=options,
        max_bytes=policy.max_bytes,
        min_examples=min_examples,
        block_size=block_size,
    )
    with _open_cached(local, policy) as handle:
        return read_data_file(handle, fmt, request)


@contextlib.contextmanager
def _open_cached(path: Path, policy: DataPolicy) -> Iterator[BinaryIO]:
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > policy.max_bytes:
            raise IntakeError(
                "data_too_large",
                f"{path.name} has {size} bytes, more than this deployment's limit of "
                f"{policy.max_bytes}; send a smaller sample.",
            )
        yield handle
