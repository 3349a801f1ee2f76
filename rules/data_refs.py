"""Data references checked by policy alone: no data read, no host resolved.

The service checks a job's reference with these at ``POST /v1/jobs``, so a user learns of a
typo or a forbidden host at once; the worker's intake checks it again with the same rules before
it reads anything, and then does what only it can (real files opened under the roots, DNS
answers classified, content validated).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from lrprobe.rules.errors import RuleError

MAX_REFERENCE_LENGTH = 4096
BUILTIN_DATASETS = ("breast_cancer", "diabetes", "digits", "iris", "mnist1d", "wine")
"""The names ``builtin://NAME`` accepts (the worker's intake builds each of them)."""

BUCKET_SCHEMES = ("s3", "gs")


def split_reference(uri: str, schemes: Iterable[str]) -> SplitResult:
    """``uri`` split, its scheme lower-cased, if it is one URI of one of ``schemes``."""
    known = tuple(schemes)
    if not isinstance(uri, str) or not uri:
        raise RuleError("invalid_data_ref", "The data reference is empty; send a URI.")
    if len(uri) > MAX_REFERENCE_LENGTH:
        raise RuleError(
            "invalid_data_ref",
            f"The data reference is longer than {MAX_REFERENCE_LENGTH} characters; shorten it.",
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri) or uri != uri.strip():
        raise RuleError(
            "invalid_data_ref",
            "The data reference contains spaces at its ends or control characters; send the "
            "URI alone.",
        )
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise RuleError("invalid_data_ref", "The data reference is not a valid URI.") from None
    scheme = parts.scheme.lower()
    if scheme not in known:
        listed = ", ".join(s + "://" for s in known)
        if not scheme or len(scheme) == 1:  # a bare path, or a Windows drive letter
            problem = f"{uri[:40]!r} is a bare path, not a data reference"
        elif scheme == "http":
            problem = "Plain http:// data references are refused here (use https://)"
        else:
            problem = f"Data references with the scheme {scheme + ':'!r} are not supported"
        raise RuleError(
            "unsupported_data_scheme",
            f"{problem}; use one of {listed} (a file as file:///ABSOLUTE/PATH under a data root).",
        )
    if not uri[len(scheme) + 1 :].startswith("//"):
        raise RuleError(
            "invalid_data_ref",
            f"A {scheme} reference starts with '{scheme}://' (two slashes); rewrite it so.",
        )
    return parts._replace(scheme=scheme)


def builtin_name(parts: SplitResult) -> str:
    """The dataset a ``builtin://NAME`` reference names, if it is a built-in one."""
    name = parts.netloc.lower()
    check_builtin_name(name)
    if parts.path not in ("", "/"):
        raise RuleError(
            "invalid_data_ref",
            "A built-in dataset is named by builtin://NAME alone, e.g. builtin://digits.",
        )
    return name


def check_builtin_name(name: str) -> None:
    if name not in BUILTIN_DATASETS:
        raise RuleError(
            "unknown_builtin_dataset",
            f"There is no built-in dataset {name!r}; use one of "
            f"{', '.join('builtin://' + n for n in BUILTIN_DATASETS)}.",
        )


def file_path(parts: SplitResult) -> Path:
    """The local path a ``file://`` reference names (not yet checked against the roots)."""
    if parts.netloc not in ("", "localhost"):
        raise RuleError(
            "invalid_data_ref",
            f"file:// references name a path on the worker, not the host {parts.netloc!r}; "
            "write file:///ABSOLUTE/PATH.",
        )
    try:
        return Path(unquote(parts.path, errors="strict"))
    except UnicodeDecodeError:
        raise RuleError(
            "invalid_data_ref", "The file:// path has percent-escapes that are not UTF-8."
        ) from None


def check_local_path(path: Path, roots: Iterable[Path]) -> Path:
    """The real path of ``path`` if both it and its real path lie under one of ``roots``.

    Raises ``data_ref_refused`` for ``..`` components, paths outside the roots and symbolic
    links that lead out of them.
    """
    written_roots = [Path(os.path.normpath(root)) for root in roots]
    if not written_roots:
        raise RuleError(
            "data_ref_refused",
            "This deployment has no data roots, so file:// references are refused; "
            "use a builtin://, an allow-listed remote or an uploaded dataset instead.",
        )
    if not path.is_absolute() or "\x00" in str(path):
        raise RuleError(
            "invalid_data_ref",
            "A file:// reference needs an absolute path, e.g. file:///data/x.npz.",
        )
    if ".." in path.parts:
        raise RuleError(
            "data_ref_refused",
            "A file:// path may not contain '..'; name the file by its path under a data root.",
        )
    written = Path(os.path.normpath(path))
    if not any(written.is_relative_to(root) for root in written_roots):
        raise RuleError(
            "data_ref_refused",
            f"{written} is outside the data roots; put the data under one of "
            f"{', '.join(str(root) for root in written_roots)} and refer to it there.",
        )
    real = Path(os.path.realpath(written))
    if not any(real.is_relative_to(os.path.realpath(root)) for root in written_roots):
        raise RuleError(
            "data_ref_refused",
            f"{written} is a symbolic link (or lies under one) that leads outside the data roots; "
            "copy the data under a data root instead of linking to it.",
        )
    return real


def host_allowed(host: str, scheme: str, allowed: Iterable[str]) -> bool:
    """The allow-list rule: an exact host, ``*.example.com`` (subdomains, not the apex) or
    ``scheme://host`` for one scheme only; case-insensitive."""
    host = host.lower().rstrip(".")
    for raw in allowed:
        entry_scheme, sep, entry_host = raw.lower().rpartition("://")
        if sep and entry_scheme != scheme:
            continue
        if entry_host.startswith("*."):
            if host.endswith(entry_host[1:]) and host != entry_host[2:]:
                return True
        elif host == entry_host.rstrip("."):
            return True
    return False


def check_remote(parts: SplitResult, allowed: Iterable[str]) -> None:
    """An ``https://``/``http://`` host or an ``s3://``/``gs://`` bucket the allow-list admits,
    named without credentials."""
    if parts.scheme in BUCKET_SCHEMES:
        _check_bucket(parts, allowed)
        return
    if parts.username is not None or parts.password is not None:
        raise RuleError(
            "invalid_data_ref",
            "A data reference may not carry credentials; remove the user:password@ part.",
        )
    host = parts.hostname
    if not host:
        raise RuleError(
            "invalid_data_ref",
            f"{parts.scheme}:// references need a host name, e.g. "
            f"{parts.scheme}://data.example.com/train.npz.",
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise RuleError(
            "invalid_data_ref", "The port of the data reference is not a number in 0-65535."
        ) from None
    if not host_allowed(host, parts.scheme, allowed):
        raise RuleError(
            "host_not_allowed",
            f"The host {host!r} is not on this deployment's data allow-list; ask an operator to "
            "add it, or upload the dataset instead.",
        )


def _check_bucket(parts: SplitResult, allowed: Iterable[str]) -> None:
    if not parts.netloc or "@" in parts.netloc or ":" in parts.netloc:
        raise RuleError(
            "invalid_data_ref",
            f"{parts.scheme}:// references name a bucket and a key, e.g. "
            f"{parts.scheme}://my-bucket/data/train.parquet.",
        )
    if parts.query:
        raise RuleError(
            "invalid_data_ref",
            f"{parts.scheme}:// references take no query string; put options after '#', e.g. "
            "#target=label.",
        )
    if not host_allowed(parts.netloc, parts.scheme, allowed):
        raise RuleError(
            "host_not_allowed",
            f"The bucket {parts.netloc!r} is not on this deployment's data allow-list; ask an "
            "operator to add it, or upload the dataset instead.",
        )
