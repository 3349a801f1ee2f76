"""Load on the API in its production configuration, measured the way issue 14 asks: ``wrk`` (a C
load generator, so the client takes little CPU) against uvicorn with several worker processes on
PostgreSQL and Redis, with 10,000 jobs for one key, and a bare FastAPI route on the same uvicorn
settings in the same run as the reference.

The script creates a throwaway database on the PostgreSQL server given (dropped after), uses a
queue of its own on Redis (deleted after), seeds one key's jobs directly in the database, starts
``uvicorn --factory lrprobe.service.asgi:app_from_environment --workers N`` and
``uvicorn bench.bare_app:app --workers N``, and runs:

1. **routes**: each route for ``--seconds`` at ``--connections`` connections; req/s, p50, p99, and
   the share of the bare route's req/s (the reference is measured before and after the routes,
   and their mean is used);
2. **idle streams**: ``--streams`` server-sent event streams open on queued jobs; the database's
   transactions per second while nothing happens (``pg_stat_database``), then the latency from
   a status change committed by another process to its arrival on an open stream;
3. **replicas**: two API processes, each its own uvicorn, sharing one key's limit of
   ``--rate-limit`` requests per minute through Redis, under load on both at once.

No Celery worker runs: submitted jobs stay queued.

    python -m bench.load                                 # the README table
    python -m bench.load --jobs 1000 --seconds 3 --streams 200     # a smoke run

Needs ``wrk`` (Debian: ``apt-get install wrk``). The load generator shares the machine with the
servers; on a 2-core machine, read the figures as lower bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg

from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service import keys, lifecycle, migrate
from lrprobe.service.broker import make_celery
from lrprobe.service.db import make_engine, make_sessionmaker
from lrprobe.service.embedded import child_environment
from lrprobe.service.keys import authenticate
from lrprobe.service.lifecycle import JobStatus, new_id
from lrprobe.service.models import Job, JobEvent, ModelArtifact, utcnow
from lrprobe.service.notify import notifier_for
from lrprobe.service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
STATUSES = [JobStatus.SUCCEEDED] * 6 + [JobStatus.FAILED, JobStatus.QUEUED, JobStatus.CANCELLED]
PGSTAT_FLUSH_SECONDS = 11.0
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class WrkResult:
    name: str
    requests: int
    non_2xx: int
    errors: int  # socket errors and timeouts
    rps: float
    p50_ms: float
    p99_ms: float

    def row(self, reference: float) -> str:
        share = self.rps / reference if reference else float("nan")
        errors = self.non_2xx + self.errors
        return (f"| {self.name:<30} | {self.rps:>7,.0f} | {self.p50_ms:>6.1f} | "
                f"{self.p99_ms:>6.1f} | {share:>5.2f} | {errors:>6} |")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def _wrk(name: str, url: str, *, seconds: float, connections: int, headers: dict[str, str],
         script: Path | None = None) -> WrkResult:  # fmt: skip
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for header, value in headers.items():
        command += ["-H", f"{header}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    if set(latency) != {"50", "99"}:
        raise RuntimeError(f"unexpected output of {' '.join(command)}:\n{out}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        name=name,
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        non_2xx=int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0,
        errors=sum(int(g) for g in errors.groups()) if errors else 0,
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(latency["50"]),
        p99_ms=_ms(latency["99"]),
    )


def _lua(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


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
    # What autovacuum does soon after a bulk insert: without statistics the planner takes the
    # 10,000 jobs for a handful and sorts them all instead of walking the (owner, created_at)
    # index.
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    engine.dispose()
    return secret, model_id, ids


@contextmanager
def _uvicorn(target: list[str], env: dict[str, str], workers: int, log: Path) -> Iterator[str]:
    port = _free_port()
    with log.open("ab") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *target, "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers), "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code in (200, 404):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"{target} did not start; see {log}")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def _api(settings: Settings, workers: int, log: Path) -> Iterator[str]:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
    env = child_environment(settings, base_env)
    target = ["--factory", "lrprobe.service.asgi:app_from_environment"]
    return _uvicorn(target, env, workers, log)


def _routes(api: str, bare: str, secret: str, model_id: str, ids: list[str], tmp: Path,
            args: argparse.Namespace) -> tuple[float, list[WrkResult]]:  # fmt: skip
    auth = {"Authorization": f"Bearer {secret}"}
    cursor = httpx.get(f"{api}/v1/jobs", params={"limit": 50}, headers=auth).json()["next_cursor"]
    lua_ids = ",".join(f'"{i}"' for i in ids)
    random_job = _lua(tmp / "job.lua", f"""
local ids = {{{lua_ids}}}
math.randomseed(os.time())
request = function() return wrk.format(nil, "/v1/jobs/" .. ids[math.random(#ids)]) end
""")  # fmt: skip
    body = json.dumps({"model_id": model_id, "data": "builtin://digits", "loss": "cross_entropy"})
    post = _lua(tmp / "post.lua", f"""
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
""")  # fmt: skip
    run = dict(seconds=args.seconds, connections=args.connections)
    scenarios = [
        ("GET /v1/jobs/{id}", f"{api}/v1/jobs", random_job),
        ("GET /v1/jobs?limit=50", f"{api}/v1/jobs?limit=50", None),
        ("GET /v1/jobs?limit=50&cursor=…", f"{api}/v1/jobs?limit=50&cursor={cursor}", None),
        ("GET /v1/jobs?status=failed", f"{api}/v1/jobs?limit=50&status=failed", None),
        ("POST /v1/jobs", f"{api}/v1/jobs", post),
    ]
    _wrk("warm-up", f"{bare}/", seconds=1, connections=args.connections, headers={})
    for _name, url, script in scenarios:
        _wrk("warm-up", url, seconds=1, connections=args.connections, headers=auth, script=script)
    before = _wrk("bare FastAPI route (before)", f"{bare}/", headers={}, **run)  # type: ignore[arg-type]
    results = [before]
    for name, url, script in scenarios:
        results.append(_wrk(name, url, headers=auth, script=script, **run))  # type: ignore[arg-type]
    results.append(_wrk("bare FastAPI route (after)", f"{bare}/", headers={}, **run))  # type: ignore[arg-type]
    return (before.rps + results[-1].rps) / 2, results


def _transactions(admin: str, database: str) -> int:
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone()
    return int(row[0]) if row else 0


async def _stream(port: int, job_id: str, secret: str, opened: asyncio.Event,
                  changes: dict[str, float]) -> None:  # fmt: skip
    """Hold one event stream open; note when its job's status change arrives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {secret}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    seen = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            seen = (seen + chunk)[-4096:]
            if b'"status": "queued"' in seen:
                opened.set()
            if b'"status": "cancelled"' in seen:
                changes[job_id] = time.perf_counter()
                return
    finally:
        writer.close()


async def _idle_streams(
    api: str, secret: str, ids: list[str], settings: Settings, admin: str, database: str,
    args: argparse.Namespace,
) -> list[str]:  # fmt: skip
    port = int(api.rsplit(":", 1)[1])
    queued = [i for n, i in enumerate(ids) if STATUSES[n % len(STATUSES)] == JobStatus.QUEUED]
    chosen = (queued * (args.streams // max(1, len(queued)) + 1))[: args.streams]
    changes: dict[str, float] = {}
    opened = [asyncio.Event() for _ in chosen]
    tasks = []
    for n, (job_id, flag) in enumerate(zip(chosen, opened, strict=True)):
        tasks.append(asyncio.create_task(_stream(port, job_id, secret, flag, changes)))
        if n % 50 == 49:
            await asyncio.sleep(0.05)  # do not flood the listen backlog
    await asyncio.wait_for(asyncio.gather(*(f.wait() for f in opened)), 120)
    # PostgreSQL 15 backends report their counts when idle, but an idle backend may hold them
    # for up to 10 s (PGSTAT_IDLE_INTERVAL): settle past the opening of the streams, then count
    # every transaction of the API's database from one reading to another, both the quiet
    # window and the 11 s after it in which its last counts arrive (the streams stay idle).
    await asyncio.sleep(PGSTAT_FLUSH_SECONDS)
    start, began = _transactions(admin, database), time.perf_counter()
    await asyncio.sleep(args.idle_seconds + PGSTAT_FLUSH_SECONDS)
    count = _transactions(admin, database) - start - 1  # minus this reading's own transaction
    window = time.perf_counter() - began
    qps = count / window
    # Status changes committed by another process, as a worker commits them.
    engine = make_engine(settings.resolved_database_url)
    notifier = notifier_for(settings.resolved_redis_url)
    sessions = make_sessionmaker(engine, notifier)
    latencies = []
    distinct = list(dict.fromkeys(chosen))
    for job_id in random.Random(0).sample(distinct, min(args.changes, len(distinct))):
        sent = time.perf_counter()
        await asyncio.to_thread(lifecycle.request_cancel, sessions, job_id)
        while job_id not in changes:
            await asyncio.sleep(0.001)
        latencies.append((changes[job_id] - sent) * 1000)
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    engine.dispose()
    if notifier is not None:
        notifier.close()
    return [
        f"| {args.streams:,} idle event streams: database transactions/s "
        f"| {qps:.2f} ({count} in {window:.1f} s) |",
        f"| status change → open stream, median of {len(latencies)} "
        f"| {statistics.median(latencies):.1f} ms (max {max(latencies):.1f} ms) |",
    ]


def _replicas(settings: Settings, secret: str, ids: list[str], tmp: Path,
              args: argparse.Namespace) -> str:  # fmt: skip
    limited = settings.model_copy(update={"rate_limit_per_minute": args.rate_limit})
    with (
        _api(limited, 1, tmp / "replica-a.log") as a,
        _api(limited, 1, tmp / "replica-b.log") as b,
    ):
        script = tmp / "job.lua"
        auth = {"Authorization": f"Bearer {secret}"}
        run = dict(seconds=args.replica_seconds, connections=4, headers=auth, script=script)
        with tempfile.TemporaryDirectory():
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(2) as pool:
                futures = [pool.submit(_wrk, n, f"{u}/v1/jobs", **run)  # type: ignore[arg-type]
                           for n, u in (("a", a), ("b", b))]  # fmt: skip
                results = [f.result() for f in futures]
    allowed = sum(r.requests - r.non_2xx - r.errors for r in results)
    refused = sum(r.non_2xx for r in results)
    return (f"| two replicas, one key limited to {args.rate_limit}/min, {args.replica_seconds:g} s "
            f"| {allowed} served, {refused} refused (429) |")  # fmt: skip


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
        help="Redis server (broker, event channel and shared rate limit)",
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs in the database")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--seconds", type=float, default=8.0, help="duration per route")
    parser.add_argument("--streams", type=int, default=1000, help="idle event streams")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="quiet window")
    parser.add_argument("--changes", type=int, default=20, help="status changes timed")
    parser.add_argument("--rate-limit", type=int, default=600, help="replicas: per minute")
    parser.add_argument("--replica-seconds", type=float, default=5.0)
    parser.add_argument("--only", choices=["routes", "streams", "replicas"], action="append")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("bench.load needs wrk: apt-get install wrk")
    only = set(args.only or ["routes", "streams", "replicas"])

    name = f"lrprobe_load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    queue = f"lrprobe-load-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="lrprobe-load-"))
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp, database_url=f"{base}/{name}",
        broker_url=f"{args.redis}/{random.randrange(1, 16)}", rate_limit_per_minute=10**9,
        max_streams_per_key=max(args.streams, 1), queue=queue,
    )  # fmt: skip
    try:
        migrate.upgrade(settings.resolved_database_url)
        started = time.perf_counter()
        secret, model_id, ids = _seed(settings, args.jobs)
        print(f"seeded {args.jobs} jobs in {time.perf_counter() - started:.1f} s", flush=True)
        bare_env = {k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
        lines: list[str] = []
        if only & {"routes", "streams"}:  # the replicas start API processes of their own
            with (
                _api(settings, args.api_workers, tmp / "api.log") as api,
                _uvicorn(
                    ["bench.bare_app:app"], bare_env, args.api_workers, tmp / "bare.log"
                ) as bare,
            ):
                print(
                    f"\nuvicorn --workers {args.api_workers} on PostgreSQL + Redis, "
                    f"{args.jobs:,} jobs for one key; wrk -t2 -c{args.connections} for "
                    f"{args.seconds:g} s per route; {os.cpu_count()} CPUs shared with wrk\n"
                )
                if "routes" in only:
                    reference, results = _routes(api, bare, secret, model_id, ids, tmp, args)
                    print(f"| {'route':<30} |   req/s | p50 ms | p99 ms | share | errors |")
                    print(f"|{'-' * 32}|--------:|-------:|-------:|------:|-------:|")
                    for result in results:
                        print(result.row(reference))
                    print()
                if "streams" in only:
                    lines += asyncio.run(
                        _idle_streams(api, secret, ids, settings, args.postgres, name, args)
                    )
        if "replicas" in only:
            if "routes" not in only:
                _lua(tmp / "job.lua", "request = function() return wrk.format(nil, "
                     f"'/v1/jobs/{ids[0]}') end\n")  # fmt: skip
            lines.append(_replicas(settings, secret, ids, tmp, args))
        if lines:
            print("| scenario | measured |\n|---|---|")
            print("\n".join(lines))
    finally:
        app = make_celery(settings)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        app.close()
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
