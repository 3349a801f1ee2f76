"""The Celery app and the one message the service sends: "run job X".

The broker carries only the job id; the job is a database row. Delivery is at least once:
``acks_late`` with ``reject_on_worker_lost`` gives a message back when its worker dies, the
claim in ``lrprobe.service.lifecycle`` makes a second delivery a no-op, and the reaper re-sends
what the broker loses. Both modes use this configuration; only the broker URL differs:

- production: Redis, with a visibility timeout above the longest probe (a message not acked by
  then is delivered again, and the conditional claim turns that into a no-op);
- embedded: kombu's SQLAlchemy transport on a SQLite file in the data dir (no server; queued
  messages are rows in that file, so they survive a restart).

This module imports Celery but nothing of the worker: the API only sends messages by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery

from lrprobe.service.settings import Settings

RUN_JOB = "lrprobe.run_job"

# Time the task may spend loading the checkpoint and data before the probe's own limit starts.
LOAD_GRACE_SECONDS = 300.0
# Between the soft limit (the task is asked to stop) and the hard limit (its process is killed).
HARD_LIMIT_GRACE_SECONDS = 60.0


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings``' broker; ``settings.queue`` is where jobs go and workers
    listen (the API, the workers and the reaper all build their app here, so they agree)."""
    app = Celery("lrprobe", broker=settings.resolved_broker_url, set_as_current=False)
    soft = settings.default_time_limit_seconds + LOAD_GRACE_SECONDS
    app.conf.update(
        task_default_queue=settings.queue,
        task_routes={RUN_JOB: {"queue": settings.queue}},
        task_serializer="json",
        accept_content=["json"],
        # State lives on the job row, never in a result backend.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # At-least-once: ack after the task ran; a worker killed mid-task gives the message back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        # One probe at a time per worker process; never hold a second message while busy.
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # Backstop limits (prefork pool); a job's own budget is enforced by the runner, and
        # send_job gives each message the limits of its job.
        task_soft_time_limit=soft,
        task_time_limit=soft + HARD_LIMIT_GRACE_SECONDS,
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        timezone="UTC",
    )
    return app


def job_time_limit(spec: Mapping[str, Any] | None, settings: Settings) -> float:
    """The probe time limit of a stored job spec: its ``budget.time_limit_s``, else the server's
    default. The one reading of it: the API and the reaper send it with the job's message, the
    runner stops the probe at it. A spec that does not validate gets the default (the runner
    then fails the job with ``invalid_spec``)."""
    budget = spec.get("budget") if isinstance(spec, Mapping) else None
    limit = budget.get("time_limit_s") if isinstance(budget, Mapping) else None
    if isinstance(limit, int | float) and not isinstance(limit, bool) and limit > 0:
        return float(limit)
    return settings.default_time_limit_seconds


def send_job(celery_app: Celery, job_id: str, *, time_limit_s: float | None = None) -> None:
    """Ask a worker to run ``job_id``; call it only after the job row is committed.

    ``time_limit_s``: the job's probe time limit (:func:`job_time_limit`), from which the
    message's soft and hard limits are derived (default: the app's limits, from
    ``default_time_limit_seconds``).
    """
    options: dict[str, Any] = {}
    if time_limit_s is not None:
        soft = time_limit_s + LOAD_GRACE_SECONDS
        options = {"soft_time_limit": soft, "time_limit": soft + HARD_LIMIT_GRACE_SECONDS}
    celery_app.send_task(RUN_JOB, args=[job_id], **options)


def _transport_options(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://", "sentinel://")):
        # Above the longest probe, its loading and the hard-limit grace: an unacked message is
        # only redelivered once its worker can no longer be running it.
        longest = settings.default_time_limit_seconds + LOAD_GRACE_SECONDS
        return {"visibility_timeout": max(3600.0, 2 * (longest + HARD_LIMIT_GRACE_SECONDS))}
    if url.startswith(("sqla+sqlite", "sqlalchemy+sqlite")):
        # kombu passes these to create_engine: writers (the API sending, the worker polling)
        # wait for each other's transactions instead of failing with "database is locked".
        return {"connect_args": {"timeout": 30.0}}
    return {}
