"""Issue 16, finding 1, against a real uvicorn process: a 300 MB unauthenticated multipart body
sent to JSON routes is refused with 413 while the API's resident memory grows by under 20 MB,
and a body (upload or JSON) that stalls or trickles is cut off with 408, leaving no temporary
file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service import keys, migrate
from lrprobe.service.db import make_engine, make_sessionmaker
from tests.reliability.servers import ROOT, free_port, wait_until

BODY_BYTES = 300 * 10**6
RSS_BUDGET = 20 * 2**20
IDLE_SECONDS = 2.0


@dataclass
class LiveApi:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    key: str

    def rss(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} for pid {self.process.pid}")

    def reset_peak(self) -> None:
        # "5" resets the peak resident size (VmHWM) to the current one (Linux >= 4.0)
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    data_dir = tmp_path_factory.mktemp("live")
    url = f"sqlite:///{data_dir / 'lrprobe.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    key = keys.create_key(make_sessionmaker(engine), ApiKeyCreate(name="live")).secret
    engine.dispose()
    port = free_port()
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "LRPROBE_DATA_DIR": str(data_dir),
        "LRPROBE_DATABASE_URL": url,
        "LRPROBE_UPLOAD_IDLE_TIMEOUT_SECONDS": str(IDLE_SECONDS),
    }
    log = (data_dir / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory",
         "lrprobe.service.asgi:app_from_environment", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: _up(port), 60, "the API to answer /healthz")
        yield LiveApi(process, port, data_dir, key)
    finally:
        process.kill()
        process.wait()
        log.close()


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Exchange:
    status: int
    head: bytes
    sent: int
    seconds: float  # reported, never asserted on
    body_finished: bool  # the client had sent its whole body when the answer came


def _exchange(
    port: int, head: bytes, chunks: Iterator[bytes], pause: float = 0.0, timeout: float = 30.0
) -> Exchange:
    """Send ``head`` then ``chunks`` from a thread while reading the answer, so a response sent
    before the body ends is read even if the server then drops the connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent = [0]
    stop = threading.Event()
    finished = threading.Event()

    def send() -> None:
        try:
            sock.sendall(head)
            for chunk in chunks:
                if stop.is_set():
                    return
                sock.sendall(chunk)
                sent[0] += len(chunk)
                if pause:
                    time.sleep(pause)
            finished.set()
        except OSError:
            return

    started = time.monotonic()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    finally:
        seconds = time.monotonic() - started
        body_finished = finished.is_set()
        stop.set()
        sock.close()
        sender.join(timeout=timeout)
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return Exchange(int(answer.split()[1]), answer, sent[0], seconds, body_finished)


def _zeros(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    block = bytes(size)
    for _ in range(total // size):
        yield block


def _head(path: str, *, length: int | None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else (
        "Transfer-Encoding: chunked\r\n"
    )  # fmt: skip
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\n{framing}{extra}\r\n"
    ).encode()


def _chunked(chunks: Iterator[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"


@pytest.mark.parametrize(
    ("path", "declared"),
    [("/v1/jobs", True), ("/v1/jobs", False), ("/v1/keys", True), ("/ui/sign-in", True)],
    ids=["jobs-content-length", "jobs-chunked", "keys-content-length", "sign-in"],
)
def test_300_mb_unauthenticated_multipart_is_413_with_rss_under_20_mb(
    live: LiveApi, path: str, declared: bool
) -> None:
    before = live.rss()
    live.reset_peak()
    body = _zeros(BODY_BYTES)
    exchange = _exchange(
        live.port,
        _head(path, length=BODY_BYTES if declared else None),
        body if declared else _chunked(body),
    )
    peak = live.rss("VmHWM")
    assert exchange.status == 413, exchange.head
    assert b"request_too_large" in exchange.head or exchange.head.endswith(b"\r\n\r\n")
    grew = peak - before
    print(
        f"{path} declared={declared}: 413 after {exchange.seconds:.2f} s, "
        f"{exchange.sent / 2**20:.1f} MiB taken by the socket, peak RSS +{grew / 2**20:.1f} MiB"
    )
    assert grew < RSS_BUDGET, grew
    assert list((live.data_dir / "tmp").iterdir()) == []


def test_a_300_mb_upload_without_a_key_is_401_before_its_body_is_read(live: LiveApi) -> None:
    before = live.rss()
    live.reset_peak()
    exchange = _exchange(
        live.port, _head("/v1/models", length=BODY_BYTES), _zeros(BODY_BYTES), timeout=10
    )
    grew = live.rss("VmHWM") - before
    assert exchange.status == 401, exchange.head
    assert grew < RSS_BUDGET, grew
    assert list((live.data_dir / "tmp").iterdir()) == []


def test_hsts_only_when_a_trusted_proxy_says_the_request_came_over_https(live: LiveApi) -> None:
    base = f"http://127.0.0.1:{live.port}"
    plain = httpx.get(f"{base}/healthz")
    # uvicorn trusts X-Forwarded-Proto from 127.0.0.1 only (--forwarded-allow-ips)
    proxied = httpx.get(f"{base}/healthz", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" not in plain.headers
    assert proxied.headers["strict-transport-security"].startswith("max-age=")
    for response in (plain, proxied):
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"


def _slow_head(live: LiveApi, path: str) -> bytes:
    kind = "multipart/form-data; boundary=x" if path == "/v1/models" else "application/json"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {10 << 20 if path == '/v1/models' else 100_000}\r\n"
        f"Authorization: Bearer {live.key}\r\n\r\n"
    ).encode()


def _opening(path: str) -> bytes:
    if path == "/v1/models":
        return b'--x\r\nContent-Disposition: form-data; name="file"; filename="m.bin"\r\n\r\n'
    return b'{"label": "'


SLOW_ROUTES = pytest.mark.parametrize("path", ["/v1/models", "/v1/jobs"], ids=["upload", "json"])


@SLOW_ROUTES
def test_a_stalled_body_is_cut_off_after_the_idle_timeout(live: LiveApi, path: str) -> None:
    def stall() -> Iterator[bytes]:
        yield _opening(path) + b"a" * 1000
        time.sleep(IDLE_SECONDS + 10)
        yield b"a" * 1000

    exchange = _exchange(live.port, _slow_head(live, path), stall())
    assert exchange.status == 408, exchange.head
    # the server answered during the stall, not once the client resumed
    assert not exchange.body_finished
    wait_until(lambda: list((live.data_dir / "tmp").iterdir()) == [], 5, "the temp file to go")


@SLOW_ROUTES
def test_a_body_trickling_below_the_minimum_rate_is_cut_off(live: LiveApi, path: str) -> None:
    def trickle() -> Iterator[bytes]:
        yield _opening(path)
        for _ in range(200):
            yield b"a" * 100  # 100 bytes every 0.25 s: 400 bytes/s, under 16 KiB/s

    exchange = _exchange(live.port, _slow_head(live, path), trickle(), pause=0.25)
    assert exchange.status == 408, exchange.head
    # cut off mid-trickle, not answered once the trickle ended
    assert not exchange.body_finished, exchange.sent
    wait_until(lambda: list((live.data_dir / "tmp").iterdir()) == [], 5, "the temp file to go")


def test_swagger_ui_renders_from_local_assets_under_its_csp(live: LiveApi) -> None:
    from tests.e2e.test_dashboard_browser import BROWSER_ARGS, CHROMIUM, _require_browser

    _require_browser()
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{live.port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            problems: list[str] = []
            elsewhere: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on(
                "request",
                lambda r: None if r.url.startswith((base, "data:")) else elsewhere.append(r.url),
            )
            page.goto(f"{base}/docs")
            page.wait_for_selector(".opblock", timeout=20_000)  # the operations are listed
            assert page.locator(".opblock").count() >= 10
        finally:
            browser.close()
    assert elsewhere == [], elsewhere
    assert problems == [], problems
