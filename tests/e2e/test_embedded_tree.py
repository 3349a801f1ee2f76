"""``lrprobe serve`` as a user runs it (a real process, its real worker and reaper children, a
SQLite data dir): the process tree lives and dies together, and a broken broker is seen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service import keys, migrate
from lrprobe.service.app import create_app
from tests.reliability.servers import free_port, wait_until
from tests.service.api_support import safetensors_mlp
from tests.support.settings import make_settings

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-c", "from lrprobe.cli.app import main; main()", "serve"]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Serve:
    """``lrprobe serve`` runs on one data dir; every process they started is found by the
    ``LRPROBE_DATA_DIR`` in its environment."""

    data_dir: Path
    log: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> tuple[subprocess.Popen[bytes], httpx.Client]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
        env |= {"LRPROBE_DATA_DIR": str(self.data_dir), "LRPROBE_TORCH_THREADS": "1"}
        with self.log.open("ab") as out:
            process = subprocess.Popen(
                [*SERVE, "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.started.append(process)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0)
        self.wait(lambda: _up(client), 120, "serve to answer")
        return process, client

    def processes(self, role: str) -> set[int]:
        """Live processes on this data dir whose command line contains ``role``."""
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                pid = int(entry.name)
                data_dir = _environ(pid).get("LRPROBE_DATA_DIR", "")
                mine = Path(data_dir).resolve() == self.data_dir.resolve()
                if mine and role in _cmdline(pid) and _alive(pid):
                    found.add(pid)
        return found

    def children(self) -> tuple[set[int], set[int]]:
        return self.processes("celery"), self.processes("lrprobe.worker.reaper")

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            wait_until(condition, timeout, what)
        except TimeoutError as exc:
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                for p in [self.log, *sorted((self.data_dir / "logs").glob("*.log"))]
                if p.is_file()
            )
            pytest.fail(f"{exc}; logs:\n{logs}")

    def kill_everything(self) -> None:
        for role in ("celery", "lrprobe.worker.reaper", "forkserver", "serve"):
            for pid in self.processes(role):
                os.kill(pid, signal.SIGKILL)
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait()


def _up(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    data_dir = tmp_path / "data"
    runner = Serve(data_dir, tmp_path / "serve.log")
    try:
        yield runner
    finally:
        runner.kill_everything()


def test_kill_9_of_serve_takes_its_worker_and_reaper_and_a_restart_runs_one_of_each(
    serve: Serve,
) -> None:
    first, client = serve.start()
    serve.wait(lambda: all(len(c) == 1 for c in serve.children()), 60, "one worker and reaper")
    worker, reaper = serve.children()
    client.close()

    # When only the serve process is killed with SIGKILL
    os.kill(first.pid, signal.SIGKILL)
    first.wait()

    # Then its worker and reaper exit on their own, within seconds
    serve.wait(lambda: not any(_alive(p) for p in worker | reaper), 15, "the orphans to exit")
    # and a restarted serve runs exactly one of each
    _, client = serve.start()
    serve.wait(lambda: all(len(c) == 1 for c in serve.children()), 60, "one worker and reaper")
    time.sleep(3.0)  # past a supervisor round: nothing restarts a second one
    assert [len(c) for c in serve.children()] == [1, 1]
    client.close()


GARBAGE = b"this is not a database" * 200


def test_a_corrupt_broker_file_is_not_ready_and_refuses_jobs_with_503(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade(url)
    (tmp_path / "broker.sqlite").write_bytes(GARBAGE)
    settings = make_settings(tmp_path, url)
    assert settings.resolved_broker_url.startswith("sqla+sqlite:///")
    app = create_app(settings)  # the real queue: Celery on the (corrupt) SQLite broker
    with TestClient(app) as client:
        sessions = app.state.services.sessions
        key = keys.create_key(sessions, ApiKeyCreate(name="a")).secret
        auth = {"Authorization": f"Bearer {key}"}
        uploaded = client.post("/v1/models", headers=auth,
                               files={"file": ("m.safetensors", safetensors_mlp())})  # fmt: skip
        assert uploaded.status_code == 201, uploaded.text

        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"] is False
        assert "not a database" in ready.json()["detail"]["broker"]

        body = {"model_id": uploaded.json()["id"], "data": "builtin://digits",
                "loss": "cross_entropy"}  # fmt: skip
        refused = client.post("/v1/jobs", headers=auth, json=body)
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "broker_unavailable"
        assert "retry" in refused.json()["detail"]
        assert client.get("/v1/jobs", headers=auth).json()["items"] == []


def test_serve_replaces_a_corrupt_broker_file_says_so_and_runs_jobs(serve: Serve) -> None:
    serve.data_dir.mkdir()
    (serve.data_dir / "broker.sqlite").write_bytes(GARBAGE)

    _, client = serve.start()

    out = serve.log.read_text()
    assert "broker.sqlite was corrupt" in out and "moved it to broker.sqlite.corrupt-" in out
    assert [p.read_bytes() for p in serve.data_dir.glob("broker.sqlite.corrupt-*")] == [GARBAGE]
    assert client.get("/readyz").status_code == 200
    secret = out.split("Admin API key (shown once, keep it): ")[1].split()[0]
    auth = {"Authorization": f"Bearer {secret}"}

    def example_job_done() -> bool:
        items = client.get("/v1/jobs", headers=auth).json()["items"]
        return bool(items) and items[0]["status"] == "succeeded"

    serve.wait(example_job_done, 180, "the example job to run")
    client.close()
