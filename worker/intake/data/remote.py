"""Size-capped downloads of remote data references into the policy's cache directory.

``https://`` (and ``http://`` where the policy allows it) is fetched with httpx, which the base
install already has, rather than through fsspec's HTTP filesystem: every hop — the first request
and each redirect — is checked against the allow-list and the address rules, the connection goes
to the one address that was checked (the Host header and the TLS server name keep the original
host, so certificates are verified as usual), proxies and ``.netrc`` from the environment are
ignored, and the body is counted as it arrives. ``s3://`` and ``gs://`` go through fsspec with
s3fs / gcsfs; for them the allow-list names buckets. An S3-compatible endpoint
(``DataPolicy.s3_endpoint_url``, or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) is checked
like a data host's address before each download and then passed to s3fs explicitly; s3fs makes
its own connection, so unlike https:// the address is not pinned (the endpoint is operator
configuration, not part of the reference).

Downloads are cached under ``cache_dir/remote/<sha256 of the reference>/``: a remote reference is
treated as immutable, so publish a changed file under a new name (or with a version in its path).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx

from lrprobe.rules.data_refs import check_remote
from lrprobe.worker.intake.data.policy import DataPolicy, Resolver, pin_address, system_resolve
from lrprobe.worker.intake.errors import IntakeError

MAX_REDIRECTS = 5
_CHUNK = 1 << 20
_EXTRAS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs")}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def fetch_remote(url: str, policy: DataPolicy, *, resolve: Resolver = system_resolve) -> Path:
    """Download ``url`` (no fragment) into the cache and return the local path."""
    parts = urlsplit(url)
    options: dict[str, Any] = {}
    if parts.scheme in ("https", "http"):
        _check_http_url(parts, policy)
    else:
        check_remote(parts, policy.allowed_hosts)
        endpoint = _s3_endpoint(policy, resolve) if parts.scheme == "s3" else None
        if endpoint is not None:
            options["endpoint_url"] = endpoint
    key = url if not options else f"{options['endpoint_url']} {url}"
    target = _cache_path(key, parts, policy)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _staging_file(target) as (handle, staging):
        if parts.scheme in ("https", "http"):
            _download_http(url, policy, resolve, handle)
        else:
            _download_fsspec(parts, policy, handle, options)
        handle.close()
        os.replace(staging, target)
    return target


def _cache_path(key: str, parts: SplitResult, policy: DataPolicy) -> Path:
    if policy.cache_dir is None:
        raise IntakeError(
            "data_ref_refused",
            "This deployment has no data cache directory, so remote references are refused; "
            "use a builtin://, a file:// under a data root or an uploaded dataset instead.",
        )
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    name = _SAFE_NAME.sub("_", parts.path.rsplit("/", 1)[-1])[-120:] or "data"
    return policy.cache_dir / "remote" / digest / name


@contextlib.contextmanager
def _staging_file(target: Path) -> Iterator[tuple[IO[bytes], str]]:
    fd, staging = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    handle = os.fdopen(fd, "wb")
    try:
        yield handle, staging
    finally:
        handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)


def _check_http_url(parts: SplitResult, policy: DataPolicy) -> None:
    if parts.scheme == "http" and not policy.allow_insecure_http:
        raise IntakeError(
            "data_ref_refused",
            "Plain http:// data references are refused because the download could be altered on "
            "the way; use https:// instead.",
        )
    check_remote(parts, policy.allowed_hosts)


def _s3_endpoint(policy: DataPolicy, resolve: Resolver) -> str | None:
    """The S3-compatible endpoint s3fs will use, after the address checks; ``None``: AWS."""
    endpoint = (
        policy.s3_endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    if not endpoint:
        return None
    parts = urlsplit(endpoint)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or port == -1
        or "@" in parts.netloc
    ):
        raise IntakeError(
            "data_ref_refused",
            "This worker's S3 endpoint is not an http(s)://HOST[:PORT] URL, so s3:// references "
            "are refused; ask an operator to fix it, or upload the dataset instead.",
        )
    if parts.scheme == "http" and not policy.allow_insecure_http:
        raise IntakeError(
            "data_ref_refused",
            f"This worker's S3 endpoint {parts.netloc} is plain http://, which is refused because "
            "the download could be altered on the way; ask an operator for an https:// endpoint.",
        )
    default_port = 443 if parts.scheme == "https" else 80
    pin_address(parts.hostname, port or default_port, policy, resolve)
    return f"{parts.scheme}://{parts.netloc}"


def _download_http(url: str, policy: DataPolicy, resolve: Resolver, out: IO[bytes]) -> None:
    timeout = httpx.Timeout(policy.timeout_s)
    verify: ssl.SSLContext | bool = True
    if policy.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(policy.ca_file))
    with httpx.Client(
        trust_env=False, follow_redirects=False, timeout=timeout, verify=verify
    ) as client:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(current)
            if parts.scheme not in ("https", "http"):
                raise IntakeError(
                    "data_ref_refused",
                    f"{_redacted(url)} redirects to a {parts.scheme or 'relative'}: address, "
                    "which is not followed; give an https:// address that serves the file.",
                )
            _check_http_url(parts, policy)
            host = parts.hostname or ""
            port = parts.port or (443 if parts.scheme == "https" else 80)
            address = pin_address(host, port, policy, resolve)
            netloc = f"[{address}]" if address.version == 6 else str(address)
            pinned = f"{parts.scheme}://{netloc}:{port}{parts.path or '/'}"
            if parts.query:
                pinned += f"?{parts.query}"
            extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
            try:
                request = client.build_request(
                    "GET", pinned, headers={"Host": parts.netloc}, extensions=extensions
                )
                response = client.send(request, stream=True)
            except httpx.InvalidURL:
                raise IntakeError(
                    "invalid_data_ref", f"{_redacted(current)} is not a valid URL."
                ) from None
            except httpx.HTTPError as exc:
                raise IntakeError(
                    "remote_fetch_failed",
                    f"Downloading {_redacted(current)} failed ({type(exc).__name__}); check that "
                    "the host serves the file and try again.",
                ) from None
            with contextlib.closing(response):
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    current = urljoin(current, location).split("#", 1)[0]
                    continue
                _check_status(response, current)
                _stream_capped(response, policy, out, current)
                return
    raise IntakeError(
        "remote_fetch_failed",
        f"{_redacted(url)} redirects more than {MAX_REDIRECTS} times; give the final address.",
    )


def _check_status(response: httpx.Response, url: str) -> None:
    if response.status_code in (404, 410):
        raise IntakeError(
            "data_not_found",
            f"{_redacted(url)} answered {response.status_code}: there is no file there; check the "
            "data reference.",
        )
    if not response.is_success:
        raise IntakeError(
            "remote_fetch_failed",
            f"{_redacted(url)} answered HTTP {response.status_code}; check that the file is "
            "public (or the worker may read it) and try again.",
        )


def _stream_capped(response: httpx.Response, policy: DataPolicy, out: IO[bytes], url: str) -> None:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit():
        _check_size(int(declared), policy.max_bytes, url)
    written = 0
    try:
        for chunk in response.iter_bytes(_CHUNK):
            written += len(chunk)
            _check_size(written, policy.max_bytes, url)
            out.write(chunk)
    except httpx.HTTPError as exc:
        raise IntakeError(
            "remote_fetch_failed",
            f"Downloading {_redacted(url)} broke off ({type(exc).__name__}); try again.",
        ) from None


def _check_size(size: int, max_bytes: int, url: str) -> None:
    if size > max_bytes:
        raise IntakeError(
            "data_too_large",
            f"{_redacted(url)} is larger than this deployment's limit of {max_bytes} bytes; "
            "send a smaller sample of the data.",
        )


def _filesystem(scheme: str, **options: Any) -> Any:
    import fsspec

    try:
        return fsspec.filesystem(scheme, **options)
    except ImportError:
        package, extra = _EXTRAS[scheme]
        raise IntakeError(
            "remote_backend_unavailable",
            f"{scheme}:// data needs {package}, which this worker lacks; install "
            f"'lrprobe[{extra}]' on the worker, or download the file and use file:// instead.",
        ) from None


def _download_fsspec(
    parts: SplitResult, policy: DataPolicy, out: IO[bytes], options: dict[str, Any]
) -> None:
    url = f"{parts.scheme}://{parts.netloc}{parts.path}"
    fs = _filesystem(parts.scheme, **options)
    path = f"{parts.netloc}{parts.path}"
    try:
        info = fs.info(path)
        if info.get("type") != "file":
            raise IntakeError(
                "unsupported_data_format",
                f"{url} is not a single file; remote data must be one .npz, .pt, .parquet, "
                ".csv, .npy or .bin file.",
            )
        size = info.get("size")
        if isinstance(size, int):
            _check_size(size, policy.max_bytes, url)
        written = 0
        with fs.open(path, "rb") as src:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                _check_size(written, policy.max_bytes, url)
                out.write(chunk)
    except IntakeError:
        raise
    except FileNotFoundError:
        raise IntakeError(
            "data_not_found", f"There is no file at {url}; check the data reference."
        ) from None
    except Exception as exc:  # any backend error (auth, network) is the reference's problem
        raise IntakeError(
            "remote_fetch_failed",
            f"Reading {url} failed ({type(exc).__name__}); check that the worker may read it.",
        ) from None


def _redacted(url: str) -> str:
    """The reference without its query string, which may hold a signature."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
