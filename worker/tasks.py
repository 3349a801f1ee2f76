"""The Celery task: a thin wrapper that hands a job id to the runner.

The reaper is not a task: it is its own process (``lrprobe.worker.reaper``), so that it never
queues behind running probes.

Nothing is returned and nothing is raised for a job's own failure: the job's status and its
failure reason live on the database row (the runner writes them).
"""

from __future__ import annotations

import functools

from billiard.process import current_process
from celery import Celery

from lrprobe.service.broker import RUN_JOB
from lrprobe.service.db import STATEMENT_TIMEOUT_SECONDS, make_engine, make_sessionmaker
from lrprobe.service.settings import Settings
from lrprobe.worker import devices, runner


@functools.cache
def worker_context() -> runner.WorkerContext:
    """Built on the first task, in the process that runs tasks (after any fork)."""
    settings = Settings()
    devices.setup_process(settings.torch_threads, getattr(current_process(), "index", None))
    engine = make_engine(
        settings.resolved_database_url, statement_timeout_s=STATEMENT_TIMEOUT_SECONDS
    )
    sessions = make_sessionmaker(engine)
    return runner.WorkerContext.create(settings, sessions)


def register(app: Celery) -> None:
    """Declare the task on ``app`` (the worker's app, or a test's)."""

    @app.task(name=RUN_JOB, ignore_result=True, shared=False)
    def run_job(job_id: str) -> None:
        runner.run_job(worker_context(), job_id)
