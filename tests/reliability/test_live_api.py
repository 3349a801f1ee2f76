"""The API as deployed (uvicorn in its own process) under hostile clients: property-based
fuzzing of every operation from its own OpenAPI document, and a large streamed upload whose
memory cost is measured on the server process."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service import keys, migrate
from lrprobe.service.app import create_app
from lrprobe.service.db import make_engine, make_sessionmaker
from lrprobe.service.embedded import child_environment
from lrprobe.service.settings import Settings
from tests.reliability.servers import Processes, free_port, wait_until
from tests.service.api_support import safetensors_mlp
from tests.support.settings import make_settings

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "code", "errors"}
FUZZ_EXAMPLES = int(os.environ.get("LRPROBE_FUZZ_EXAMPLES", "100"))
UPLOAD_CAP = 512 << 20
LARGE_UPLOAD = 256 << 20

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@dataclass
class LiveApi:
    url: str
    pid: int
    key: str
    admin: str
    settings: Settings


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """uvicorn on SQLite and the embedded broker (no worker: submitted jobs stay queued)."""
    tmp = tmp_path_factory.mktemp("live")
    data = tmp / "data"
    data.mkdir()
    config = make_settings(data, rate_limit_per_minute=1_000_000, max_upload_bytes=UPLOAD_CAP,
                           data_roots=[data / "roots"])  # fmt: skip
    migrate.upgrade(config.resolved_database_url)
    engine = make_engine(config.resolved_database_url)
    sessions = make_sessionmaker(engine)
    key = keys.create_key(sessions, ApiKeyCreate(name="fuzz")).secret
    admin = keys.create_key(sessions, ApiKeyCreate(name="admin", admin=True)).secret
    engine.dispose()
    base = {k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
    logs = tmp / "logs"
    logs.mkdir()
    processes = Processes(child_environment(config, base=base), logs)
    port = free_port()
    server = processes.api(port)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, 60, "the API to be ready")
        yield LiveApi(url, server.pid, key, admin, config)
    finally:
        processes.stop_all()
        if sys.exc_info()[0] is not None:
            print(processes.logs())


# --- fuzzing from the OpenAPI document ---------------------------------------------------------

_SPEC_SETTINGS = make_settings(Path("/nonexistent-lrprobe"))
schema = schemathesis.openapi.from_dict(create_app(_SPEC_SETTINGS).openapi())


def _assert_problem(response: Any) -> None:
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:500]}"
    if status >= 400:
        # schemathesis gives each header as a list of values
        assert response.headers.get("content-type") == ["application/problem+json"], response.text
        body = response.json()
        assert body.keys() >= PROBLEM_KEYS, body
        assert body["status"] == status and isinstance(body["code"], str) and body["detail"]


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_fuzzed_requests_never_500_and_every_error_is_problem_json(
    case: Any, live: LiveApi
) -> None:
    headers = {"Authorization": f"Bearer {live.admin}"}
    response = case.call(base_url=live.url, headers=headers, timeout=30)
    _assert_problem(response)


# --- a large upload is streamed, not buffered ------------------------------------------------


def _peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_a_large_upload_streams_to_disk_with_flat_server_memory(live: LiveApi) -> None:
    if not Path(f"/proc/{live.pid}/status").exists():
        pytest.skip("needs /proc to read the server's peak memory")
    model = safetensors_mlp()
    # A valid checkpoint followed by padding: the transport is what is measured; the format
    # check refuses the padded file once it is received whole.
    boundary = "lrprobe-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.safetensors\"\r\n\r\n").encode()  # fmt: skip
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        yield model
        chunk = bytes(1 << 20)
        for _ in range(LARGE_UPLOAD >> 20):
            yield chunk
        yield tail

    before = _peak_rss_bytes(live.pid)
    response = httpx.post(
        f"{live.url}/v1/models",
        headers={"Authorization": f"Bearer {live.key}",
                 "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body(), timeout=120,
    )  # fmt: skip
    growth = _peak_rss_bytes(live.pid) - before
    # the padded file is refused by the format check after it was received whole
    assert response.status_code in (415, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
    print(f"\n{LARGE_UPLOAD >> 20} MiB upload: server peak RSS grew {growth / 2**20:.1f} MiB")
    assert growth < 64 << 20
    # and nothing of it stayed on disk
    assert list((live.settings.data_dir / "tmp").iterdir()) == []
