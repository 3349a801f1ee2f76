"""Load on the API in its production configuration: uvicorn with several worker processes on
PostgreSQL, Redis as the broker, 10,000 jobs in the database.

The script creates a throwaway database on the PostgreSQL server given (and drops it after),
uses a queue of its own on the Redis given (deleted after), seeds one key's jobs directly in the
database, starts ``uvicorn --factory lrprobe.service.asgi:app_from_environment --workers N`` on
127.0.0.1, and drives it with an asyncio client at a fixed concurrency for a fixed time per
scenario. It prints requests per second, p50/p99 latency and the error count (any non-2xx or
transport error) per scenario. No Celery worker runs: submitted jobs stay queued.

    python -m bench.load                               # the README table
    python -m bench.load --jobs 1000 --seconds 3       # a smoke run

The client runs on the same machine as the server and takes CPU from it: figures are a lower
bound of what the API serves on the same hardware with the load generator elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg

from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service import keys, migrate
from lrprobe.service.broker import make_celery
from lrprobe.service.db import make_engine, make_sessionmaker
from lrprobe.service.embedded import child_environment
from lrprobe.service.keys import authenticate
from lrprobe.service.lifecycle import JobStatus, new_id
from lrprobe.service.models import Job, JobEvent, ModelArtifact, utcnow
from lrprobe.service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
STATUSES = [JobStatus.SUCCEEDED] * 6 + [JobStatus.FAILED, JobStatus.QUEUED, JobStatus.CANCELLED]


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def row(self) -> str:
        ok = sorted(self.latencies)
        rps = len(ok) / self.seconds if self.seconds else 0.0
        p50 = statistics.median(ok) * 1000 if ok else float("nan")
        p99 = ok[min(len(ok) - 1, int(0.99 * len(ok)))] * 1000 if ok else float("nan")
        return (f"| {self.name:<28} | {len(ok) + self.errors:>8} | {self.errors:>6} | "
                f"{rps:>8.0f} | {p50:>8.1f} | {p99:>8.1f} |")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed(settings: Settings, count: int) -> tuple[str, str, list[str]]:
    """One key with ``count`` jobs (and their events); returns (secret, model id, job ids)."""
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    secret = keys.create_key(sessions, ApiKeyCreate(name="load")).secret
    owner = authenticate(sessions, secret)
    assert owner is not None
    model_id = new_id()
    spec = {"model_id": model_id, "data": "builtin://digits", "loss": "cross_entropy"}
    now = utcnow()
    ids = [new_id() for _ in range(count)]
    with sessions.begin() as session:
        session.add(ModelArtifact(
            id=model_id, owner_id=owner.id, sha256="0" * 64, filename="m.safetensors",
            size_bytes=1, format="safetensors", arch="mlp", arch_config={},
        ))  # fmt: skip
        session.flush()
        for n, job_id in enumerate(ids):
            status = STATUSES[n % len(STATUSES)]
            at = now - timedelta(seconds=count - n)
            final = status != JobStatus.QUEUED
            session.add(Job(
                id=job_id, owner_id=owner.id, model_id=model_id, status=status, spec=spec,
                created_at=at, queued_at=at, attempts=1 if final else 0,
                started_at=at if final else None, finished_at=at if final else None,
                error_code="non_finite_loss" if status == JobStatus.FAILED else None,
            ))  # fmt: skip
        session.flush()
        for job_id in ids:
            session.add(JobEvent(job_id=job_id, kind="status", data={"status": "queued"}))
    engine.dispose()
    return secret, model_id, ids


async def _drive(
    name: str, call: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]],
    client: httpx.AsyncClient, concurrency: int, seconds: float,
) -> Result:  # fmt: skip
    result = Result(name)
    stop = time.perf_counter() + seconds

    async def user() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                response = await call(client)
                ok = 200 <= response.status_code < 300
            except httpx.HTTPError:
                ok = False
            if ok:
                result.latencies.append(time.perf_counter() - started)
            else:
                result.errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - began
    return result


async def _run_load(
    url: str, secret: str, model_id: str, ids: list[str], concurrency: int, seconds: float
) -> list[Result]:
    headers = {"Authorization": f"Bearer {secret}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    rng = random.Random(0)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=30
    ) as client:
        first = (await client.get("/v1/jobs", params={"limit": 50})).json()
        deep_cursor = first["next_cursor"]
        body = {"model_id": model_id, "data": "builtin://digits", "loss": "cross_entropy"}
        scenarios: list[tuple[str, Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]]] = [
            ("GET /v1/jobs/{id}", lambda c: c.get(f"/v1/jobs/{rng.choice(ids)}")),
            ("GET /v1/jobs (page of 50)", lambda c: c.get("/v1/jobs", params={"limit": 50})),
            ("GET /v1/jobs (next page)",
             lambda c: c.get("/v1/jobs", params={"limit": 50, "cursor": deep_cursor})),
            ("GET /v1/jobs?status=failed",
             lambda c: c.get("/v1/jobs", params={"limit": 50, "status": "failed"})),
            ("POST /v1/jobs (submit)", lambda c: c.post("/v1/jobs", json=body)),
        ]  # fmt: skip
        results = []
        for name, call in scenarios:
            await _drive(name, call, client, concurrency, min(1.0, seconds))  # warm-up
            results.append(await _drive(name, call, client, concurrency, seconds))
        return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "LRPROBE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="admin URL of a PostgreSQL server (a database is created and dropped)",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("LRPROBE_TEST_REDIS", "redis://127.0.0.1:6379"),
        help="Redis server (the broker)",
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs in the database")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration per scenario")
    args = parser.parse_args(argv)

    name = f"lrprobe_load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    queue = f"lrprobe-load-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="lrprobe-load-"))
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp, database_url=f"{base}/{name}",
        broker_url=f"{args.redis}/{random.randrange(1, 16)}", rate_limit_per_minute=10**9,
        queue=queue,
    )  # fmt: skip
    server: subprocess.Popen[bytes] | None = None
    try:
        migrate.upgrade(settings.resolved_database_url)
        started = time.perf_counter()
        secret, model_id, ids = _seed(settings, args.jobs)
        print(f"seeded {args.jobs} jobs in {time.perf_counter() - started:.1f} s")
        port = _free_port()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
        env = child_environment(settings, base_env)
        with (tmp / "api.log").open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory",
                 "lrprobe.service.asgi:app_from_environment", "--host", "127.0.0.1",
                 "--port", str(port), "--workers", str(args.api_workers),
                 "--log-level", "warning", "--no-access-log"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit(f"the API did not start; see {tmp / 'api.log'}")
        results = asyncio.run(_run_load(url, secret, model_id, ids, args.concurrency, args.seconds))
        print(f"\nuvicorn --workers {args.api_workers} on PostgreSQL + Redis, {args.jobs} jobs, "
              f"{args.concurrency} concurrent clients, {args.seconds:g} s per scenario, "
              f"{os.cpu_count()} CPUs shared with the load generator\n")  # fmt: skip
        print("| scenario                     | requests | errors |    req/s |  p50 ms |  p99 ms |")
        print("|------------------------------|---------:|-------:|---------:|--------:|--------:|")
        for result in results:
            print(result.row())
        if any(r.errors for r in results):
            raise SystemExit(f"errors during the load; see {tmp / 'api.log'}")
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        app = make_celery(settings)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        app.close()
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
