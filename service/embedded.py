"""Embedded mode's background processes, started by ``lrprobe serve``: no external server.

Two child processes run the same code as production:

- a Celery worker (``celery -A lrprobe.worker.celery_app worker --pool=solo``, concurrency 1) that
  consumes the broker in ``settings.resolved_broker_url`` (by default kombu's SQLAlchemy
  transport on ``DATA_DIR/broker.sqlite``: messages are rows in that file, so queued jobs
  survive a restart);
- the reaper (``python -m lrprobe.worker.reaper``), which requeues the jobs of a dead worker and
  re-sends jobs whose message was lost.

A supervisor thread restarts either child if it exits while the services run (a probe that
exhausts memory kills its worker; the reaper then gives the job back, up to ``max_attempts``).
Children get the serve process's settings through ``LRPROBE_*`` variables, so options given on
the command line reach them too. This module starts processes by module name and imports
nothing of ``worker``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lrprobe.service.settings import Settings

log = logging.getLogger(__name__)

SUPERVISE_INTERVAL_SECONDS = 2.0
STOP_TIMEOUT_SECONDS = 20.0


def child_environment(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with every setting as ``LRPROBE_*``
    (``LRPROBE_QUEUE`` included, so that children use the API's queue)."""
    env = {k: v for k, v in (os.environ if base is None else base).items()}
    for name, value in settings.model_dump(mode="json").items():
        key = f"LRPROBE_{name.upper()}"
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value if isinstance(value, str) else json.dumps(value)
    # Resolved URLs, so that children agree with this process whatever their working directory.
    env["LRPROBE_DATA_DIR"] = str(Path(settings.data_dir).resolve())
    env["LRPROBE_DATABASE_URL"] = settings.resolved_database_url
    env["LRPROBE_BROKER_URL"] = settings.resolved_broker_url
    env["LRPROBE_ARTIFACT_URL"] = settings.resolved_artifact_url
    return env


def worker_command(queue: str, loglevel: str = "INFO") -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "lrprobe.worker.celery_app", "worker",
        "--pool=solo", "--concurrency=1", "-Q", queue, f"--loglevel={loglevel}",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def reaper_command(interval: float | None = None) -> list[str]:
    command = [sys.executable, "-m", "lrprobe.worker.reaper"]
    return command if interval is None else [*command, "--interval", str(interval)]


@dataclass
class _Child:
    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0


@dataclass
class BackgroundServices:
    """The embedded worker and reaper processes; :meth:`stop` ends them."""

    settings: Settings
    env: dict[str, str]
    children: list[_Child]
    log_dir: Path
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    @property
    def worker(self) -> subprocess.Popen[bytes] | None:
        return self.children[0].process

    def start(self) -> None:
        with self._lock:
            for child in self.children:
                self._spawn(child)
        self._thread = threading.Thread(target=self._supervise, name="lrprobe-supervisor")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for child in self.children:
                _terminate(child)

    def _spawn(self, child: _Child) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{child.name}.log").open("ab") as out:
            child.process = subprocess.Popen(
                child.command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        log.info("embedded %s started (pid %d)", child.name, child.process.pid)

    def _supervise(self) -> None:
        while not self._stop.wait(SUPERVISE_INTERVAL_SECONDS):
            with self._lock:
                if self._stop.is_set():
                    return
                for child in self.children:
                    if child.process is not None and child.process.poll() is not None:
                        log.warning("embedded %s exited with %s; restarting", child.name,
                                    child.process.returncode)  # fmt: skip
                        child.restarts += 1
                        self._spawn(child)


def start_background_services(
    settings: Settings, *, reap_interval: float | None = None
) -> BackgroundServices:
    """Start the embedded worker and reaper on ``settings.queue`` (logs in ``DATA_DIR/logs``)."""
    services = BackgroundServices(
        settings=settings,
        env=child_environment(settings),
        children=[
            _Child("worker", worker_command(settings.queue)),
            _Child("reaper", reaper_command(reap_interval)),
        ],
        log_dir=Path(settings.data_dir).resolve() / "logs",
    )
    services.start()
    return services


def stop_background_services(services: BackgroundServices) -> None:
    services.stop()


def _terminate(child: _Child) -> None:
    process = child.process
    if process is None or process.poll() is not None:
        return
    # SIGTERM is Celery's warm shutdown: a running probe finishes first. Past the timeout
    # the process is killed; its job's lease expires and the reaper gives it back.
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
