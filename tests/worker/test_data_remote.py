"""Remote data references: the allow-list and address rules refuse before any traffic, and
allowed fetches are size-capped downloads into the cache.

Every refusal test runs under ``no_network``, which fails the test if a socket connects or a
name is resolved; the fetch tests talk only to an HTTP server on 127.0.0.1 that the test starts.
"""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lrprobe.worker.intake.data import remote as remote_data
from lrprobe.worker.intake.data.policy import DataPolicy, address_refusal
from lrprobe.worker.intake.data.references import open_dataset
from lrprobe.worker.intake.errors import IntakeError

# --- network guards --------------------------------------------------------------------------


@dataclass
class NetworkLog:
    attempts: list[str] = field(default_factory=list)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkLog]:
    """Fail on any connection or DNS look-up made through the socket module."""
    log = NetworkLog()

    def refuse(what: str) -> Callable[..., Any]:
        def guard(*args: Any, **kwargs: Any) -> Any:
            log.attempts.append(f"{what}{args[1:] if what == 'connect' else args}")
            raise AssertionError(f"network used: {what}")

        return guard

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    yield log
    assert log.attempts == []


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkLog]:
    """Allow connections to 127.0.0.1 only; record (and block) any other destination."""
    log = NetworkLog()
    real_connect = socket.socket.connect

    def guard(self: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        if not ipaddress.ip_address(host).is_loopback:
            log.attempts.append(str(address))
            raise AssertionError(f"connection to {address} attempted")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guard)
    yield log
    assert log.attempts == []


class FakeResolver:
    def __init__(self, answers: dict[str, Sequence[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "unknown host")
        return self.answers[host]


# --- a local server ------------------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    send_length: bool = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]
    seen: list[tuple[str, str]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host", "")))
        route = self.server.routes.get(self.path.split("?", 1)[0], Route(status=404))
        self.send_response(route.status)
        for key, value in route.headers.items():
            self.send_header(key, value)
        if route.send_length:
            self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        self.wfile.write(route.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class LocalServer:
    port: int
    routes: dict[str, Route]
    seen: list[tuple[str, str]]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def server() -> Iterator[LocalServer]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.routes = {}
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield LocalServer(httpd.server_address[1], httpd.routes, httpd.seen)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def npz_bytes(count: int = 6) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.ones((count, 3), np.float32), y=np.arange(count) % 2)
    return buffer.getvalue()


def local_policy(tmp_path: Path, **overrides: Any) -> DataPolicy:
    settings: dict[str, Any] = {
        "allowed_hosts": ("127.0.0.1",),
        "allow_private_addresses": True,
        "allow_insecure_http": True,
        "cache_dir": tmp_path / "cache",
        "max_bytes": 100_000,
        "timeout_s": 10.0,
    }
    settings.update(overrides)
    return DataPolicy(**settings)


def remote_policy(tmp_path: Path, **overrides: Any) -> DataPolicy:
    settings: dict[str, Any] = {
        "allowed_hosts": ("data.example.com", "127.0.0.1", "10.0.0.1", "169.254.169.254"),
        "cache_dir": tmp_path / "cache",
    }
    settings.update(overrides)
    return DataPolicy(**settings)


def refused(code: str, ref: str, policy: DataPolicy, **kwargs: Any) -> IntakeError:
    with pytest.raises(IntakeError) as info:
        open_dataset(ref, policy, **kwargs)
    assert info.value.code == code, info.value.message
    return info.value


# --- refusals before any traffic -----------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "what"),
    [
        ("https://127.0.0.1/x.npz", "loopback"),
        ("https://10.0.0.1/x.npz", "private"),
        ("https://169.254.169.254/latest/meta-data/x.npz", "link-local"),
        ("https://[::1]/x.npz", "loopback"),
        ("https://[::ffff:127.0.0.1]/x.npz", "loopback"),
        ("https://[::ffff:169.254.169.254]/x.npz", "link-local"),
        ("https://[64:ff9b::a9fe:a9fe]/x.npz", "link-local"),
        ("https://[fe80::1]/x.npz", "link-local"),
        ("https://0.0.0.0/x.npz", "unspecified"),
        ("https://0.1.2.3/x.npz", "unspecified"),
        ("https://224.0.0.1/x.npz", "multicast"),
        ("https://100.64.0.1/x.npz", "non-global"),
    ],
)
def test_internal_literal_addresses_are_refused_without_traffic(
    tmp_path: Path, no_network: NetworkLog, ref: str, what: str
) -> None:
    host = ref.split("/")[2].strip("[]")
    policy = remote_policy(tmp_path, allowed_hosts=(host,))
    error = refused("address_not_allowed", ref, policy)
    assert what in error.message


def test_metadata_address_stays_refused_even_when_private_addresses_are_allowed(
    tmp_path: Path, no_network: NetworkLog
) -> None:
    policy = remote_policy(tmp_path, allow_private_addresses=True)
    refused("address_not_allowed", "https://169.254.169.254/latest/x.npz", policy)


def test_host_resolving_to_a_private_address_is_refused(
    tmp_path: Path, no_network: NetworkLog
) -> None:
    resolver = FakeResolver({"data.example.com": ["10.1.2.3"]})
    error = refused(
        "address_not_allowed",
        "https://data.example.com/x.npz",
        remote_policy(tmp_path),
        resolve=resolver,
    )
    assert "10.1.2.3" in error.message
    assert resolver.calls == ["data.example.com"]


def test_host_with_any_private_address_is_refused(tmp_path: Path, no_network: NetworkLog) -> None:
    resolver = FakeResolver({"data.example.com": ["93.184.216.34", "127.0.0.1"]})
    refused(
        "address_not_allowed",
        "https://data.example.com/x.npz",
        remote_policy(tmp_path),
        resolve=resolver,
    )


def test_unresolvable_host_is_data_not_found(tmp_path: Path, no_network: NetworkLog) -> None:
    refused(
        "data_not_found",
        "https://data.example.com/x.npz",
        remote_policy(tmp_path),
        resolve=FakeResolver({}),
    )


@pytest.mark.parametrize(
    "ref",
    [
        "https://evil.example.net/x.npz",
        "https://data.example.com.evil.net/x.npz",
        "https://8.8.8.8/x.npz",
        "s3://someone-elses-bucket/x.npz",
        "gs://someone-elses-bucket/x.npz",
    ],
)
def test_hosts_off_the_allow_list_are_refused(
    tmp_path: Path, no_network: NetworkLog, ref: str
) -> None:
    refused("host_not_allowed", ref, remote_policy(tmp_path))


def test_allow_list_wildcards_and_scheme_entries(tmp_path: Path, no_network: NetworkLog) -> None:
    policy = remote_policy(tmp_path, allowed_hosts=("*.example.org", "s3://bucket-a"))
    resolver = FakeResolver({"cdn.example.org": ["10.0.0.9"]})
    # the wildcard admits a subdomain (then the address rule refuses it), not the apex
    refused("address_not_allowed", "https://cdn.example.org/x.npz", policy, resolve=resolver)
    refused("host_not_allowed", "https://example.org/x.npz", policy)
    refused("host_not_allowed", "gs://bucket-a/x.npz", policy)


def test_plain_http_needs_the_insecure_flag(tmp_path: Path, no_network: NetworkLog) -> None:
    error = refused("data_ref_refused", "http://data.example.com/x.npz", remote_policy(tmp_path))
    assert "https://" in error.message


def test_credentials_in_the_url_are_refused(tmp_path: Path, no_network: NetworkLog) -> None:
    refused("invalid_data_ref", "https://user:pw@data.example.com/x.npz", remote_policy(tmp_path))


def test_unsupported_remote_format_is_refused_before_download(
    tmp_path: Path, no_network: NetworkLog
) -> None:
    refused("unsupported_data_format", "https://data.example.com/x.exe", remote_policy(tmp_path))


def test_remote_needs_a_cache_dir(tmp_path: Path, no_network: NetworkLog) -> None:
    policy = remote_policy(tmp_path, cache_dir=None)
    refused("data_ref_refused", "https://data.example.com/x.npz", policy)


@pytest.mark.parametrize(("scheme", "extra"), [("s3", "s3"), ("gs", "gcs")])
def test_missing_cloud_backend_names_the_extra(
    tmp_path: Path, no_network: NetworkLog, monkeypatch: pytest.MonkeyPatch, scheme: str, extra: str
) -> None:
    import fsspec

    package = "s3fs" if scheme == "s3" else "gcsfs"

    def missing_backend(protocol: str, **kwargs: Any) -> Any:
        # what fsspec raises when the backend package is not installed
        raise ImportError(f"Install {package} to access {protocol}")

    monkeypatch.setattr(fsspec, "filesystem", missing_backend)
    policy = remote_policy(tmp_path, allowed_hosts=("bucket",))
    error = refused("remote_backend_unavailable", f"{scheme}://bucket/x.npz", policy)
    assert f"lrprobe[{extra}]" in error.message


def test_address_rules() -> None:
    strict = DataPolicy()
    lenient = DataPolicy(allow_private_addresses=True)
    for text in ("8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"):
        assert address_refusal(ipaddress.ip_address(text), strict) is None
    for text in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "fc00::1", "::1"):
        address = ipaddress.ip_address(text)
        assert address_refusal(address, strict) is not None
        assert address_refusal(address, lenient) is None
    for text in (
        "169.254.169.254",
        "fe80::1",
        "0.0.0.0",
        "::",
        "239.1.1.1",
        "ff02::1",
        "240.0.0.1",
    ):
        assert address_refusal(ipaddress.ip_address(text), lenient) is not None


# --- fetches from the local server ---------------------------------------------------------


def test_fetch_from_a_local_server_then_reuse_the_cache(
    tmp_path: Path, server: LocalServer, loopback_only: NetworkLog
) -> None:
    server.routes["/d/train.npz"] = Route(body=npz_bytes())
    policy = local_policy(tmp_path)

    first = open_dataset(server.url("/d/train.npz"), policy)
    second = open_dataset(server.url("/d/train.npz"), policy)

    assert first.name == "train.npz"
    assert first.num_examples == 6
    assert second.num_examples == 6
    assert len(server.seen) == 1
    cached = list((tmp_path / "cache").rglob("*"))
    assert not [p for p in cached if p.name.startswith(".partial")]


def test_options_ride_in_the_fragment_and_the_query_goes_to_the_server(
    tmp_path: Path, server: LocalServer, loopback_only: NetworkLog
) -> None:
    server.routes["/t.csv"] = Route(body=b"a,label\n1,x\n2,y\n3,x\n")
    data = open_dataset(server.url("/t.csv?sig=abc#target=label"), local_policy(tmp_path))
    assert data.class_names == ("x", "y")
    assert server.seen[0][0] == "/t.csv?sig=abc"


def test_a_resolved_host_is_pinned_to_the_checked_address(
    tmp_path: Path, server: LocalServer, loopback_only: NetworkLog
) -> None:
    server.routes["/x.npz"] = Route(body=npz_bytes())
    resolver = FakeResolver({"files.test": ["127.0.0.1"]})
    policy = local_policy(tmp_path, allowed_hosts=("files.test",))

    data = open_dataset(server.url("/x.npz", host="files.test"), policy, resolve=resolver)

    assert data.num_examples == 6
    assert resolver.calls == ["files.test"]  # one look-up: no second answer can be swapped in
    assert server.seen == [("/x.npz", f"files.test:{server.port}")]


def test_redirect_to_the_metadata_service_is_refused_before_connecting(
    tmp_path: Path, server: LocalServer, loopback_only: NetworkLog
) -> None:
    target = "http://169.254.169.254/latest/meta-data/x.npz"
    server.routes["/r.npz"] = Route(status=302, headers={"Location": target})
    policy = local_policy(tmp_path, allowed_hosts=("127.0.0.1", "169.254.169.254"))
    refused("address_not_allowed", server.url("/r.npz"), policy)


def test_redirect_to_a_host_off_the_allow_list_is_refused(
    tmp_path: Path, server: LocalServer, loopback_only: NetworkLog
) -> None:
    server.routes["/r.npz"] = Route(status=301, headers={"Location": "https://evil.test/x.npz"})
    refused("host_not_allowed", server.url("/r.npz"), local_policy(tmp_path))


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x.npz"])
def test_redirect_to_another_scheme_is_refused(
    tmp_path: Path, server: LocalServer, loopback_only: NetworkLog, location: str
) -> None:
    server.routes["/r.npz"] = Route(status=302, headers={"Location": location})
    refused("data_ref_refused", server.url("/r.npz"), local_policy(tmp_path))


def test_redirect_within_the_allowed_host_is_followed(
    tmp_path: Path, server: LocalServer, loopback_only: NetworkLog
) -> None:
    server.routes["/old.npz"] = Route(status=307, headers={"Location": "/new/data.npz"})
    server.routes["/new/data.npz"] = Route(body=npz_bytes(4))
    assert open_dataset(server.url("/old.npz"), local_policy(tmp_path)).num_examples == 4


def test_redirect_loops_end(tmp_path: Path, server: LocalServer, loopback_only: NetworkLog) -> None:
    server.routes["/loop.npz"] = Route(status=302, headers={"Location": "/loop.npz"})
    refused("remote_fetch_failed", server.url("/loop.npz"), local_policy(tmp_path))


@pytest.mark.parametrize(
    ("status", "code"), [(404, "data_not_found"), (500, "remote_fetch_failed")]
)
def test_http_errors_have_codes(
    tmp_path: Path, server: LocalServer, loopback_only: NetworkLog, status: int, code: str
) -> None:
    server.routes["/e.npz"] = Route(status=status, body=b"nope")
    refused(code, server.url("/e.npz?token=secret"), local_policy(tmp_path))


@pytest.mark.parametrize("send_length", [True, False])
def test_oversized_downloads_are_cut_off_and_not_cached(
    tmp_path: Path, server: LocalServer, loopback_only: NetworkLog, send_length: bool
) -> None:
    server.routes["/big.npz"] = Route(body=b"\0" * 300_000, send_length=send_length)
    refused("data_too_large", server.url("/big.npz"), local_policy(tmp_path))
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_connection_refused_is_remote_fetch_failed(
    tmp_path: Path, loopback_only: NetworkLog
) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    refused("remote_fetch_failed", f"http://127.0.0.1:{port}/x.npz", local_policy(tmp_path))


def test_hostile_file_served_remotely_is_refused(
    tmp_path: Path, server: LocalServer, loopback_only: NetworkLog
) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([object(), 1], dtype=object), y=np.zeros(2))
    server.routes["/evil.npz"] = Route(body=buffer.getvalue())
    refused("pickled_data_refused", server.url("/evil.npz"), local_policy(tmp_path))


# --- s3:// and gs:// through fsspec ----------------------------------------------------------


@pytest.fixture
def bucket_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Serve s3://BUCKET/KEY from tmp_path/store/BUCKET/KEY through fsspec."""
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    store = tmp_path / "store"
    store.mkdir()
    filesystem = DirFileSystem(path=str(store), fs=LocalFileSystem())
    monkeypatch.setattr(remote_data, "_filesystem", lambda scheme, **_: filesystem)
    return store


def test_s3_object_is_downloaded_through_fsspec(tmp_path: Path, bucket_store: Path) -> None:
    (bucket_store / "bucket-a" / "sets").mkdir(parents=True)
    (bucket_store / "bucket-a" / "sets" / "t.npz").write_bytes(npz_bytes(5))
    policy = remote_policy(tmp_path, allowed_hosts=("s3://bucket-a",))
    assert open_dataset("s3://bucket-a/sets/t.npz", policy).num_examples == 5


def test_s3_object_over_the_limit_is_refused(tmp_path: Path, bucket_store: Path) -> None:
    (bucket_store / "bucket-a").mkdir()
    (bucket_store / "bucket-a" / "t.npz").write_bytes(npz_bytes(500))
    policy = remote_policy(tmp_path, allowed_hosts=("bucket-a",), max_bytes=1000)
    refused("data_too_large", "s3://bucket-a/t.npz", policy)


def test_missing_s3_object_is_data_not_found(tmp_path: Path, bucket_store: Path) -> None:
    policy = remote_policy(tmp_path, allowed_hosts=("bucket-a",))
    refused("data_not_found", "gs://bucket-a/none.npz", policy)


def test_bucket_references_take_options_in_the_fragment_only(
    tmp_path: Path, bucket_store: Path
) -> None:
    policy = remote_policy(tmp_path, allowed_hosts=("bucket-a",))
    refused("invalid_data_ref", "s3://bucket-a/t.csv?target=y", policy)


# --- https with a pinned address -----------------------------------------------------------


@dataclass
class TlsServer:
    port: int
    ca_file: Path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    """An HTTPS server on 127.0.0.1 whose self-signed certificate names files.test only."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=files.test"]
    command += ["-addext", "subjectAltName=DNS:files.test"]
    subprocess.run(command, check=True, capture_output=True)
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.routes = {"/x.npz": Route(body=npz_bytes(3))}
    httpd.seen = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield TlsServer(httpd.server_address[1], cert)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def tls_policy(tmp_path: Path, server: TlsServer) -> DataPolicy:
    return local_policy(
        tmp_path, allowed_hosts=("files.test",), allow_insecure_http=False, ca_file=server.ca_file
    )


def test_https_connects_to_the_pinned_address_and_verifies_the_original_name(
    tmp_path: Path, tls_server: TlsServer, loopback_only: NetworkLog
) -> None:
    resolver = FakeResolver({"files.test": ["127.0.0.1"]})
    ref = f"https://files.test:{tls_server.port}/x.npz"
    data = open_dataset(ref, tls_policy(tmp_path, tls_server), resolve=resolver)
    assert data.num_examples == 3
    assert resolver.calls == ["files.test"]


def test_https_certificate_for_another_name_is_refused(
    tmp_path: Path, tls_server: TlsServer, loopback_only: NetworkLog
) -> None:
    resolver = FakeResolver({"other.test": ["127.0.0.1"]})
    policy = dataclasses.replace(tls_policy(tmp_path, tls_server), allowed_hosts=("other.test",))
    error = refused(
        "remote_fetch_failed",
        f"https://other.test:{tls_server.port}/x.npz",
        policy,
        resolve=resolver,
    )
    assert "ConnectError" in error.message
