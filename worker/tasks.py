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
from lrprobe.worker import composition, devices, runner


@functools.cache
def worker_context() -> runner.WorkerContext:
    """Built on the first task, in the process that runs tasks (after any fork: the root's
    engine is made here, never in a prefork pool's parent)."""
    root = composition.from_environment()
    devices.setup_process(root.settings.torch_threads, getattr(current_process(), "index", None))
    return root.runner_context()


def register(app: Celery) -> None:
    """Declare the task on ``app`` (the worker's app, or a test's)."""

    @app.task(name=RUN_JOB, ignore_result=True, shared=False)
    def run_job(job_id: str) -> None:
        runner.run_job(worker_context(), job_id)
