"""Data references checked at submit time, without reading any data or resolving any host.

The worker's intake checks every reference again, fully (real paths, DNS answers, content);
this refuses early what policy alone rules out, with the intake's codes, so a user learns of a
typo or a forbidden host from ``POST /v1/jobs`` rather than from a failed job.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import SplitResult, unquote, urlsplit

from lrprobe.service.errors import DatasetNotFoundError, UnprocessableError
from lrprobe.service.settings import Settings

SCHEMES = ("builtin", "file", "https", "s3", "gs", "upload")
# Kept equal to lrprobe.worker.intake.datasets_builtin.BUILTIN_DATASETS (a test compares them).
BUILTIN_DATASETS = ("breast_cancer", "diabetes", "digits", "iris", "mnist1d", "wine")
MAX_REFERENCE_LENGTH = 4096


def check_data_ref(uri: str, settings: Settings, owns_dataset: Callable[[str], bool]) -> None:
    """Raise ``UnprocessableError`` (intake codes) or ``DatasetNotFoundError`` if ``uri`` cannot
    be used. ``owns_dataset(id)`` says whether the submitting key uploaded that dataset."""
    parts = _split(uri)
    if parts.scheme == "builtin":
        name = parts.netloc.lower()
        if parts.path not in ("", "/") or name not in BUILTIN_DATASETS:
            raise _invalid(
                "unknown_builtin_dataset",
                f"There is no built-in dataset {uri!r}; use one of "
                f"{', '.join('builtin://' + n for n in BUILTIN_DATASETS)}.",
            )
    elif parts.scheme == "upload":
        dataset_id = parts.netloc or parts.path.lstrip("/")
        if not dataset_id or "/" in dataset_id or not owns_dataset(dataset_id):
            raise DatasetNotFoundError(
                f"There is no uploaded dataset {dataset_id!r}; upload it with POST /v1/datasets "
                "and use the upload://ID it returns."
            )
    elif parts.scheme == "file":
        _check_file(parts, settings.data_roots)
    else:
        _check_remote(parts, settings.allowed_data_hosts)


def _invalid(code: str, detail: str) -> UnprocessableError:
    return UnprocessableError(
        detail,
        code=code,
        errors=[{"loc": ["body", "data"], "msg": detail, "type": code}],
    )


def _split(uri: str) -> SplitResult:
    if len(uri) > MAX_REFERENCE_LENGTH or any(ord(c) < 33 or ord(c) == 127 for c in uri):
        raise _invalid(
            "invalid_data_ref",
            "A data reference is one URI of at most 4096 characters without spaces or control "
            "characters.",
        )
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise _invalid("invalid_data_ref", f"{uri[:100]!r} is not a valid URI.") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        hint = " (a bare path?)" if not scheme or len(scheme) == 1 else ""
        extra = " plain http:// is refused (use https://);" if scheme == "http" else ""
        raise _invalid(
            "unsupported_data_scheme",
            f"Data references of the form {scheme or uri[:20]!r}{hint} are not supported;{extra} "
            "use builtin://NAME, file:///PATH, https://HOST/PATH, s3://BUCKET/KEY, "
            "gs://BUCKET/KEY or upload://DATASET_ID.",
        )
    if not uri[len(scheme) + 1 :].startswith("//"):
        raise _invalid(
            "invalid_data_ref", f"Write {scheme}:// references with two slashes, e.g. {scheme}://…"
        )
    return parts._replace(scheme=scheme)


def _check_file(parts: SplitResult, roots: list[Path]) -> None:
    if parts.netloc not in ("", "localhost"):
        raise _invalid(
            "invalid_data_ref", "A file:// reference names a local path: file:///data/x.npz."
        )
    if not roots:
        raise _invalid(
            "data_ref_refused",
            "This deployment has no data roots, so file:// references are refused; use a "
            "builtin://, an allow-listed remote or an uploaded dataset instead.",
        )
    path = PurePosixPath(unquote(parts.path))
    if not path.is_absolute() or "\x00" in str(path):
        raise _invalid(
            "invalid_data_ref",
            "A file:// reference needs an absolute path, e.g. file:///data/x.npz.",
        )
    if ".." in path.parts:
        raise _invalid(
            "data_ref_refused",
            "A file:// path may not contain '..'; name the file by its path under a data root.",
        )
    written = os.path.normpath(str(path))
    normalised = [os.path.normpath(str(root)) for root in roots]
    if not any(Path(written).is_relative_to(root) for root in normalised):
        raise _invalid(
            "data_ref_refused",
            f"{written} is outside the data roots; put the data under one of "
            f"{', '.join(normalised)} and refer to it there.",
        )
    real = os.path.realpath(written)
    if os.path.exists(written) and not any(
        Path(real).is_relative_to(os.path.realpath(root)) for root in normalised
    ):
        raise _invalid(
            "data_ref_refused",
            f"{written} is a symbolic link (or lies under one) that leads outside the data "
            "roots; copy the data under a data root instead of linking to it.",
        )


def host_allowed(host: str, scheme: str, allowed: list[str]) -> bool:
    """The intake's allow-list rule: exact host, ``*.example.com`` (subdomains, not the apex) or
    ``scheme://host`` for one scheme only; case-insensitive."""
    host = host.lower().rstrip(".")
    for raw in allowed:
        entry = raw.lower()
        entry_scheme, sep, entry_host = entry.rpartition("://")
        if sep and entry_scheme != scheme:
            continue
        pattern = entry_host if sep else entry
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def _check_remote(parts: SplitResult, allowed: list[str]) -> None:
    try:
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        raise _invalid("invalid_data_ref", "The reference's host or port is invalid.") from None
    if not host:
        example = "data.example.com/train.npz" if parts.scheme == "https" else "bucket/train.npz"
        raise _invalid(
            "invalid_data_ref",
            f"{parts.scheme}:// references need a host or bucket, e.g. {parts.scheme}://{example}.",
        )
    if parts.username or parts.password:
        raise _invalid(
            "data_ref_refused",
            "Credentials in a data reference are refused; the operator configures access.",
        )
    if not host_allowed(host, parts.scheme, allowed):
        raise _invalid(
            "host_not_allowed",
            f"{host!r} is not on this deployment's list of data hosts; ask the operator to add "
            "it, or upload the dataset instead.",
        )
