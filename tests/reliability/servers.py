"""Private servers for fault tests: a throwaway PostgreSQL cluster and a Redis process of their
own, on free loopback ports, that a test may stop, kill and restart without touching the
machine's shared servers. Plus the lrprobe processes of the production deployment (Celery
workers, the reaper, the API under uvicorn) started against them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
PG_BIN_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_binary(name: str) -> str | None:
    for directory in PG_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file():
            return str(candidate)
    return shutil.which(name)


def missing_binaries() -> str | None:
    """Why private servers cannot be started here (None if they can)."""
    if pg_binary("initdb") is None or pg_binary("pg_ctl") is None:
        return "PostgreSQL's initdb/pg_ctl are not installed"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    return None


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition``; returns the seconds it took, raises TimeoutError past ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class PrivatePostgres:
    """``initdb`` + ``pg_ctl`` in a temporary directory (as the ``postgres`` user when run as
    root, since initdb refuses root); listens on 127.0.0.1 only."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lrprobe-pg-"))
        self.data = self.dir / "data"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres")
        self._run(pg_binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")  # fmt: skip
        self.start()

    def _run(self, *command: str | None) -> None:
        args = [str(c) for c in command]
        if self._as_postgres:
            args = ["runuser", "-u", "postgres", "--", *args]
        subprocess.run(args, check=True, capture_output=True, timeout=60)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.dir} -F -c max_connections=200"
        self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "60",
                  "-l", str(self.dir / "postgres.log"), "start")  # fmt: skip

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, new ones are refused."""
        self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A ``redis-server`` child without persistence: killing it loses every message."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_until(lambda: _pings(client), 20, "redis to start")
        client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def keys(self) -> int:
        client = redis.Redis(port=self.port)
        try:
            return sum(int(client.info("keyspace").get(f"db{n}", {}).get("keys", 0))
                       for n in range(16))  # fmt: skip
        finally:
            client.close()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class Processes:
    """lrprobe processes of one test, all killed at the end; logs in ``log_dir``."""

    env: dict[str, str]
    log_dir: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, name: str, command: list[str], **env: str) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}-{len(self.started)}.log").open("wb") as log:
            process = subprocess.Popen(
                command, cwd=ROOT, env=self.env | env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.started.append(process)
        return process

    def worker(
        self, queue: str, prefix: tuple[str, ...] = (), **env: str
    ) -> subprocess.Popen[bytes]:
        """A Celery worker on ``queue``; ``prefix``: a command that runs it (e.g. prlimit)."""
        from lrprobe.service.embedded import worker_command

        return self.spawn("worker", [*prefix, *worker_command(queue)], **env)

    def reaper(self, interval: float) -> subprocess.Popen[bytes]:
        return self.spawn("reaper", [sys.executable, "-m", "lrprobe.worker.reaper", "--interval",
                                     str(interval)])  # fmt: skip

    def api(self, port: int, workers: int = 1) -> subprocess.Popen[bytes]:
        return self.spawn("api", [sys.executable, "-m", "uvicorn", "--factory",
                                  "lrprobe.service.asgi:app_from_environment",
                                  "--host", "127.0.0.1",
                                  "--port", str(port), "--workers", str(workers),
                                  "--log-level", "warning"])  # fmt: skip

    @staticmethod
    def kill9(process: subprocess.Popen[bytes]) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )
