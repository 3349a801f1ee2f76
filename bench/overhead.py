"""A job's overhead beyond its probe: submit → final, as the SDK's ``wait()`` sees it, minus the
probe's own ``cost.seconds``, over small jobs, in both modes:

- **embedded**: ``lrprobe serve`` on a fresh data dir (SQLite, the SQLite-backed broker, the
  embedded worker and reaper), no external server;
- **production**: uvicorn on PostgreSQL, Redis as broker and event channel, one Celery worker
  (``--pool=solo``), as ``docker compose`` runs them.

Each mode first runs one job that is not counted (it pays the worker's first torch import and
the service's own example job), then ``--jobs`` jobs one after another, and prints the median and
the range of the overhead, and the medians of where it went: the submit request, the pickup by
a worker, the worker's own work beyond the probe (loading, checks, database writes) and the
final event reaching ``wait()`` (with its closing GET of the job).

    python -m bench.overhead                    # both modes, 4 jobs each
    python -m bench.overhead --mode embedded
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import torch

from lrprobe.client import Client
from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service import keys, migrate
from lrprobe.service.broker import make_celery
from lrprobe.service.db import make_engine, make_sessionmaker
from lrprobe.service.embedded import child_environment, worker_command
from lrprobe.service.settings import Settings
from lrprobe.worker.intake.checkpoints.architectures.mlp import MLP, MLPConfig
from lrprobe.worker.intake.checkpoints.loading import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"sizes": [4, 16, 3], "activation": "tanh"}
BUDGET = {"batches": 4, "batch_size": 16, "heldout_batches": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _process(command: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_ready(url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the service did not become ready; see {log}")


@dataclass
class Overhead:
    """One job's seconds: its total overhead, and where it went (from the job's timestamps)."""

    total: float  # submit → wait() returned, minus the probe's cost.seconds
    submit: float  # request sent → job row created
    pickup: float  # created → claimed by the worker
    worker: float  # claimed → finished, minus the probe's cost.seconds (loading, checks, writes)
    follow: float  # finished → wait() returned (the event reaching the SDK, a GET of the job)


def _overheads(url: str, secret: str, checkpoint: Path, jobs: int) -> list[Overhead]:
    with Client(base_url=url, api_key=secret, timeout=60) as lrp:
        model = lrp.upload_model(checkpoint)
        spec = dict(model=model.id, data="builtin://iris", budget=BUDGET, device="cpu")
        lrp.submit(**spec, wait=True, progress=False, timeout=300)  # type: ignore[arg-type]
        overheads = []
        for _ in range(jobs):
            sent, started = time.time(), time.perf_counter()
            job = lrp.submit(**spec, wait=True, progress=False, timeout=300)  # type: ignore[arg-type]
            wall, returned = time.perf_counter() - started, time.time()
            if job.status != "succeeded":
                raise SystemExit(f"job {job.id} ended {job.status}: {job.error}")
            probe = job.recommendation().data.cost.seconds
            row = job.data
            assert row.started_at is not None and row.finished_at is not None
            created, claimed = row.created_at.timestamp(), row.started_at.timestamp()
            finished = row.finished_at.timestamp()
            overheads.append(Overhead(
                total=wall - probe, submit=created - sent, pickup=claimed - created,
                worker=finished - claimed - probe, follow=returned - finished,
            ))  # fmt: skip
        return overheads


def _embedded(tmp: Path, checkpoint: Path, jobs: int) -> list[Overhead]:
    data = tmp / "embedded"
    secret = "lrp_" + secrets.token_urlsafe(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
    env |= {"LRPROBE_DATA_DIR": str(data), "LRPROBE_BOOTSTRAP_ADMIN_KEY": secret,
            "LRPROBE_TORCH_THREADS": "1"}  # fmt: skip
    port = _free_port()
    command = [sys.executable, "-c", "from lrprobe.cli.app import main; main()", "serve",
               "--port", str(port)]  # fmt: skip
    with _process(command, env, tmp / "embedded.log"):
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, tmp / "embedded.log")
        return _overheads(url, secret, checkpoint, jobs)


def _production(
    tmp: Path, checkpoint: Path, jobs: int, postgres: str, redis: str
) -> list[Overhead]:
    name = f"lrprobe_overhead_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    # A queue of this run's own (the API, the worker and the reaper all read LRPROBE_QUEUE),
    # on a random Redis database besides.
    queue = f"lrprobe-overhead-{uuid.uuid4().hex[:8]}"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp / "production", database_url=f"{base}/{name}",
        broker_url=f"{redis}/{random.randrange(1, 16)}", torch_threads=1, queue=queue,
    )  # fmt: skip
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        migrate.upgrade(settings.resolved_database_url)
        engine = make_engine(settings.resolved_database_url)
        secret = keys.create_key(make_sessionmaker(engine), ApiKeyCreate(name="bench")).secret
        engine.dispose()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
        env = child_environment(settings, base_env)
        port = _free_port()
        api = [sys.executable, "-m", "uvicorn", "--factory",
               "lrprobe.service.asgi:app_from_environment", "--port", str(port),
               "--log-level", "warning"]  # fmt: skip
        with ExitStack() as stack:
            stack.enter_context(_process(api, env, tmp / "api.log"))
            stack.enter_context(_process(worker_command(queue), env, tmp / "worker.log"))
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, tmp / "api.log")
            return _overheads(url, secret, checkpoint, jobs)
    finally:
        app = make_celery(settings)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        app.close()
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", choices=["embedded", "production"], action="append")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "LRPROBE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--redis", default=os.environ.get("LRPROBE_TEST_REDIS", "redis://127.0.0.1:6379")
    )
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lrprobe-overhead-"))
    torch.manual_seed(0)
    checkpoint = tmp / "iris-mlp.safetensors"
    save_checkpoint(MLP(MLPConfig(**CONFIG)), checkpoint, "mlp", CONFIG)  # type: ignore[arg-type]
    print("| mode | jobs | overhead median s (min – max) | submit | pickup | worker | follow |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for mode in args.mode or ["embedded", "production"]:
        if mode == "embedded":
            overheads = _embedded(tmp, checkpoint, args.jobs)
        else:
            overheads = _production(tmp, checkpoint, args.jobs, args.postgres, args.redis)
        totals = [o.total for o in overheads]
        parts = [statistics.median(getattr(o, part) for o in overheads)
                 for part in ("submit", "pickup", "worker", "follow")]  # fmt: skip
        print(f"| {mode} | {len(overheads)} | {statistics.median(totals):.2f} "
              f"({min(totals):.2f} – {max(totals):.2f}) | "
              + " | ".join(f"{p:.2f}" for p in parts) + " |", flush=True)  # fmt: skip
    print(f"(logs in {tmp})")


if __name__ == "__main__":
    main()
