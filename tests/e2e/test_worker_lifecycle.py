"""Real Celery workers consuming real messages, on both deployments:

- production: PostgreSQL + Redis (a fresh database and a queue of this run's own);
- embedded: a SQLite database + kombu's SQLAlchemy transport on a SQLite file, started the way
  ``lrprobe serve`` starts it (``lrprobe.service.embedded``).

A worker is a ``celery worker --pool=solo`` subprocess; the API's side is played by
``lrprobe.service.broker.send_job`` after the row is committed, the reaper's by ``reap_once``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from celery import Celery
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service.app import create_app
from lrprobe.service.broker import make_celery, send_job
from lrprobe.service.embedded import start_background_services, worker_command
from lrprobe.service.keys import create_key
from lrprobe.service.lifecycle import FINAL
from lrprobe.service.models import Job, Recommendation, utcnow
from lrprobe.service.settings import Settings
from lrprobe.worker.intake.checkpoints.architectures.mlp import MLP, MLPConfig
from lrprobe.worker.intake.checkpoints.loading import save_checkpoint
from lrprobe.worker.reaper import reap_once
from tests.support.databases import (
    REDIS,
    create_postgres_database,
    drop_postgres_database,
    sessions_for,
)
from tests.support.jobs import IRIS_MLP, make_job
from tests.support.settings import make_settings
from tests.worker.jobs import env_for, job_row, store_checkpoint

pytestmark = [
    pytest.mark.slow,
    # kombu 5.7's SQLAlchemy transport declares its models with a loader strategy that
    # SQLAlchemy 2.1 deprecates; harmless, and not ours to change.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
LEASE = 3.0  # short, so that a dead worker's job is reaped within seconds
# A probe of several seconds on one CPU thread: a wider MLP on digits, the largest budget.
SLOW_MODEL = {"sizes": [64, 256, 256, 10], "activation": "tanh"}
SLOW = {
    "data": "builtin://digits",
    "config": SLOW_MODEL,
    "budget": {"batches": 256, "batch_size": 512},
}


@dataclass
class Stack:
    settings: Settings
    sessions: sessionmaker[Session]
    app: Celery
    tmp: Path
    sha: str
    slow_sha: str
    workers: list[subprocess.Popen[bytes]]

    def start_worker(self) -> subprocess.Popen[bytes]:
        with (self.tmp / f"worker-{len(self.workers)}.log").open("wb") as log:
            worker = subprocess.Popen(
                worker_command(self.settings.queue), cwd=ROOT, env=env_for(self.settings),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.workers.append(worker)
        return worker

    def reap(self) -> list[str]:
        return reap_once(self.settings, self.sessions, self.app)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.tmp.glob("*.log"))


def wait_for(condition, timeout: float, stack: Stack, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; logs:\n{stack.logs()}")


def final(stack: Stack, job_id: str, timeout: float = 60.0) -> Job:
    wait_for(lambda: job_row(stack.sessions, job_id).status in FINAL, timeout, stack, "a final job")
    return job_row(stack.sessions, job_id)


def progressing(sessions: sessionmaker[Session], job_id: str) -> bool:
    job = job_row(sessions, job_id)
    if job.status in FINAL:
        pytest.fail(
            f"the job ended before the worker could be killed: {job.status} {job.error_code}"
        )
    return job.progress_done > 0


def recommendations(sessions: sessionmaker[Session], job_id: str) -> int:
    with sessions() as session:
        query = select(func.count()).select_from(Recommendation)
        return session.scalar(query.where(Recommendation.job_id == job_id)) or 0


@pytest.fixture(params=["postgresql+redis", "sqlite+sqlite"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    queue = f"lrprobe-test-{uuid.uuid4().hex[:10]}"
    postgres = request.param.startswith("postgresql")
    url = create_postgres_database() if postgres else None
    broker = f"{REDIS}/{uuid.uuid4().int % 15 + 1}" if postgres else None
    settings = make_settings(
        tmp_path / "data", url, broker_url=broker, lease_seconds=LEASE, requeue_after_seconds=2.0,
        queue=queue,
    )  # fmt: skip
    settings.data_dir.mkdir()
    cleanup = ExitStack()
    sessions = cleanup.enter_context(sessions_for(settings.resolved_database_url))
    app = make_celery(settings)
    stack = Stack(
        settings, sessions, app, tmp_path, store_checkpoint(settings, tmp_path),
        store_checkpoint(settings, tmp_path, SLOW_MODEL), [],
    )  # fmt: skip
    try:
        yield stack
    finally:
        for worker in stack.workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
        if postgres:
            with app.connection_for_write() as conn:
                conn.default_channel.queue_delete(queue)
        app.close()
        cleanup.close()
        if url is not None:
            drop_postgres_database(url)


def test_a_sent_job_is_run_by_a_worker_and_its_lost_twin_by_the_reaper(stack: Stack) -> None:
    stack.start_worker()
    sent = make_job(stack.sessions, stack.sha)
    send_job(stack.app, sent)
    # Given a queued job whose message never reached the broker (the API died after commit)
    lost = make_job(stack.sessions, stack.sha)
    with stack.sessions.begin() as session:
        session.execute(
            update(Job).where(Job.id == lost).values(queued_at=utcnow() - timedelta(hours=1))
        )

    assert final(stack, sent).status == "succeeded"
    assert job_row(stack.sessions, lost).status == "queued"
    # When the reaper runs, it re-sends it, and it finishes
    assert lost in stack.reap()
    job = final(stack, lost)
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert recommendations(stack.sessions, sent) == recommendations(stack.sessions, lost) == 1


def test_a_job_whose_worker_is_killed_finishes_exactly_once(stack: Stack) -> None:
    worker = stack.start_worker()
    job_id = make_job(stack.sessions, stack.slow_sha, **SLOW)
    send_job(stack.app, job_id)
    wait_for(lambda: progressing(stack.sessions, job_id), 60, stack, "probe progress")
    # When the worker is killed mid-probe
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    assert job_row(stack.sessions, job_id).status == "running"
    stack.start_worker()
    # Then its lease expires, the reaper gives the job back, and the new worker finishes it
    wait_for(lambda: job_id in stack.reap(), 4 * LEASE, stack, "the reaper to requeue")
    job = final(stack, job_id, timeout=120)
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert recommendations(stack.sessions, job_id) == 1
    # and a late duplicate delivery changes nothing: the one worker left takes messages in
    # order, one at a time, so once a job sent after the duplicate is done, the duplicate was
    # consumed before it
    send_job(stack.app, job_id)
    marker = make_job(stack.sessions, stack.sha)
    send_job(stack.app, marker)
    assert final(stack, marker).status == "succeeded"
    job = job_row(stack.sessions, job_id)
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert recommendations(stack.sessions, job_id) == 1


def test_a_job_submitted_through_the_api_runs_on_the_configured_queue(stack: Stack) -> None:
    # Given a worker on a queue that is not the default one, and no reaper running
    assert stack.settings.queue != Settings.model_fields["queue"].default
    stack.start_worker()
    torch.manual_seed(0)
    checkpoint = stack.tmp / "api-mlp.safetensors"
    save_checkpoint(MLP(MLPConfig(**IRIS_MLP)), checkpoint, "mlp", IRIS_MLP)
    # When the job is submitted through the API (its own Celery queue, built from the settings)
    with TestClient(create_app(stack.settings)) as http:
        secret = create_key(stack.sessions, ApiKeyCreate(name="u")).secret
        auth = {"Authorization": f"Bearer {secret}"}
        uploaded = http.post(
            "/v1/models", headers=auth, files={"file": (checkpoint.name, checkpoint.read_bytes())}
        )
        assert uploaded.status_code == 201, uploaded.text
        body = {"model_id": uploaded.json()["id"], "data": "builtin://iris",
                "loss": "cross_entropy", "budget": {"batches": 8, "batch_size": 32},
                "device": "cpu"}  # fmt: skip
        submitted = http.post("/v1/jobs", headers=auth, json=body)
        assert submitted.status_code == 202, submitted.text
    # Then the worker on that queue runs it from the API's own message (nothing re-sent it)
    job = final(stack, submitted.json()["id"])
    assert (job.status, job.attempts) == ("succeeded", 1)


def test_embedded_services_run_jobs_survive_restarts_and_a_killed_worker(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", lease_seconds=LEASE, requeue_after_seconds=30.0)
    settings.data_dir.mkdir()
    assert settings.resolved_broker_url.startswith("sqla+sqlite:///")
    cleanup = ExitStack()
    sessions = cleanup.enter_context(sessions_for(settings.resolved_database_url))
    app = make_celery(settings)
    sha = store_checkpoint(settings, tmp_path)
    slow_sha = store_checkpoint(settings, tmp_path, SLOW_MODEL)
    stack = Stack(settings, sessions, app, tmp_path / "data" / "logs", sha, slow_sha, [])
    # Given a job sent while no worker runs (the message is a row in broker.sqlite)
    queued = make_job(sessions, sha)
    send_job(app, queued)
    app.close()
    services = start_background_services(settings, reap_interval=1.0)
    try:
        assert final(stack, queued, timeout=90).status == "succeeded"
        # When the embedded worker is killed mid-probe
        slow = make_job(sessions, slow_sha, **SLOW)
        app = make_celery(settings)
        send_job(app, slow)
        wait_for(lambda: progressing(sessions, slow), 60, stack, "probe progress")
        assert services.worker is not None
        os.killpg(services.worker.pid, signal.SIGKILL)
        # Then the supervisor restarts it, the reaper re-sends the job, and it finishes once
        # (the new worker starts its probe forkserver first: generous on a loaded machine)
        job = final(stack, slow, timeout=300)
        assert (job.status, job.attempts) == ("succeeded", 2)
        assert recommendations(sessions, slow) == 1
        assert services.children[0].restarts == 1
    finally:
        services.stop()
        app.close()
        cleanup.close()


def test_the_worker_app_loads_and_declares_the_task() -> None:
    out = subprocess.run(
        [sys.executable, "-c",
         "import json; from lrprobe.worker.celery_app import app; print(json.dumps([*app.tasks]))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("LRPROBE_")}
        | {"LRPROBE_DATA_DIR": "/nonexistent-lrprobe"},
    )  # fmt: skip
    # the reaper is a process of its own, never a task that would queue behind probes
    assert [name for name in json.loads(out.stdout) if name.startswith("lrprobe.")] == [
        "lrprobe.run_job"
    ]
