"""Fixtures for fault tests: private PostgreSQL and Redis servers (one of each per module, so
a test may stop or kill them), and a production stack on them: a fresh migrated database, a
queue of the test's own, settings with short leases, and the lrprobe processes it starts."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service import keys
from lrprobe.service.broker import make_celery
from lrprobe.service.db import make_engine, make_sessionmaker
from lrprobe.service.embedded import child_environment
from lrprobe.service.lifecycle import FINAL
from lrprobe.service.models import Job, Recommendation
from lrprobe.service.settings import Settings
from tests.reliability.servers import (
    PrivatePostgres,
    PrivateRedis,
    Processes,
    free_port,
    missing_binaries,
    wait_until,
)
from tests.support.databases import create_postgres_database, migrated
from tests.support.settings import make_settings
from tests.worker.jobs import job_row, store_checkpoint

LEASE = 3.0  # seconds: a dead worker's job is reaped within seconds
REAP_INTERVAL = 1.0
REQUEUE_AFTER = 3.0


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    reason = missing_binaries()
    if reason is not None:
        pytest.skip(reason)
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    reason = missing_binaries()
    if reason is not None:
        pytest.skip(reason)
    server = PrivateRedis()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class Stack:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    celery: Celery
    queue: str
    processes: Processes
    postgres: PrivatePostgres
    redis: PrivateRedis
    tmp: Path
    clients: list[httpx.Client] = field(default_factory=list)

    def worker(self, prefix: tuple[str, ...] = (), **env: str) -> Any:
        return self.processes.worker(self.queue, prefix, **env)

    def reaper(self) -> Any:
        return self.processes.reaper(REAP_INTERVAL)

    def checkpoint(self, config: dict[str, Any] | None = None) -> str:
        return store_checkpoint(self.settings, self.tmp, *([config] if config else []))

    def job(self, job_id: str) -> Job:
        return job_row(self.sessions, job_id)

    def wait_final(self, job_ids: list[str], timeout: float) -> list[Job]:
        def done() -> bool:
            with self.sessions() as session:
                count = session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.id.in_(job_ids), Job.status.in_([s.value for s in FINAL]))
                )
            return count == len(job_ids)

        try:
            wait_until(done, timeout, f"{len(job_ids)} job(s) to finish")
        except TimeoutError as exc:
            pytest.fail(f"{exc}; logs:\n{self.processes.logs()}")
        return [self.job(j) for j in job_ids]

    def recommendations(self, job_ids: list[str]) -> dict[str, int]:
        with self.sessions() as session:
            rows = session.execute(
                select(Recommendation.job_id, func.count())
                .where(Recommendation.job_id.in_(job_ids))
                .group_by(Recommendation.job_id)
            ).all()
        return {job_id: n for job_id, n in rows}

    def start_api(self) -> httpx.Client:
        port = free_port()
        self.processes.api(port)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0)
        self.clients.append(client)

        def up() -> bool:
            try:
                return client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_until(up, 60, "the API to start")
        except TimeoutError as exc:
            pytest.fail(f"{exc}; logs:\n{self.processes.logs()}")
        return client

    def key(self, name: str = "k") -> str:
        return keys.create_key(self.sessions, ApiKeyCreate(name=name)).secret


@pytest.fixture
def stack(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, tmp_path: Path
) -> Iterator[Stack]:
    queue = f"lrprobe-fault-{uuid.uuid4().hex[:10]}"
    url = migrated(create_postgres_database(admin=private_postgres.admin_url))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    settings = make_settings(
        data_dir,
        url,
        broker_url=f"{private_redis.url}/{uuid.uuid4().int % 15 + 1}",
        lease_seconds=LEASE,
        requeue_after_seconds=REQUEUE_AFTER,
        torch_threads=1,
        rate_limit_per_minute=100_000,
        queue=queue,
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = Processes(child_environment(settings, base), logs)
    engine = make_engine(url)
    celery = make_celery(settings)
    stack = Stack(settings, engine, make_sessionmaker(engine), celery, queue, processes,
                  private_postgres, private_redis, tmp_path)  # fmt: skip
    try:
        yield stack
    finally:
        for client in stack.clients:
            client.close()
        processes.stop_all()
        celery.close()
        engine.dispose()
