"""examples/reprobe_training.py against the real embedded service (``lrprobe serve``: API,
Celery worker and reaper processes on SQLite): training is re-probed through the service and
the rate history is plotted."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lrprobe.client import Client

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "lrp_example_test_admin_key_0123456789"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),  # matplotlib's Agg-only advice
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def embedded_service(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
    env |= {
        "LRPROBE_DATA_DIR": str(tmp_path / "data"),
        "LRPROBE_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "LRPROBE_TORCH_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-c", "from lrprobe.cli.app import main; main()", "serve",
         "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"lrprobe serve did not start:\n{(tmp_path / 'serve.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_the_example_trains_with_reprobing_through_the_embedded_service(
    embedded_service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LRPROBE_URL", embedded_service)
    monkeypatch.setenv("LRPROBE_API_KEY", ADMIN_KEY)
    spec = importlib.util.spec_from_file_location("reprobe_training", ROOT / "examples" /
                                                  "reprobe_training.py")  # fmt: skip
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    image = tmp_path / "rates.png"

    rp = example.main(["--steps", "60", "--every", "30", "--probe-batches", "8",
                       "--run", "example-test", "--plot", str(image)])  # fmt: skip

    assert rp.history.failures == []
    # step 60's probe runs only if step 30's was back by then (training does not wait for it)
    probed = [e.probed_at for e in rp.history.events]
    assert probed in ([0, 30], [0, 30, 60])
    assert rp.history.events[1].step > 30  # applied at a later step boundary
    assert image.stat().st_size > 10_000 and image.read_bytes()[:4] == b"\x89PNG"
    with Client(embedded_service, ADMIN_KEY) as client:
        jobs = list(client.list_jobs(run="example-test"))
    assert sorted(j.data.run_step for j in jobs) == probed
