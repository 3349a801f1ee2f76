"""The Celery task layer: thin, named as the API sends it, configured for at-least-once."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery

from lrprobe.service.broker import RUN_JOB, make_celery, send_job
from lrprobe.worker import tasks
from lrprobe.worker.composition import WorkerRoot
from tests.support.settings import make_settings


@pytest.fixture
def app(tmp_path: Path) -> Celery:
    app = make_celery(make_settings(tmp_path, broker_url="memory://", queue="q-test"))
    tasks.register(app)
    return app


def test_the_app_is_configured_for_at_least_once_delivery(app: Celery) -> None:
    conf = app.conf
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost) == (True, True)
    assert (conf.worker_prefetch_multiplier, conf.task_ignore_result) == (1, True)
    assert conf.task_always_eager is False
    assert conf.task_time_limit > conf.task_soft_time_limit > 900


def test_redis_visibility_timeout_exceeds_the_longest_probe(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, broker_url="redis://127.0.0.1:6379/0")
    app = make_celery(settings)
    timeout = app.conf.broker_transport_options["visibility_timeout"]
    assert timeout > app.conf.task_time_limit


def test_the_task_hands_the_job_id_to_the_runner(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(tasks, "worker_context", lambda: "context")
    monkeypatch.setattr(tasks.runner, "run_job", lambda context, job_id: calls.append(job_id))

    app.tasks[RUN_JOB].run("job-1")

    assert calls == ["job-1"]


def test_send_job_carries_only_the_id_and_the_job_time_limits(app: Celery) -> None:
    sent: list[tuple[object, dict[str, object]]] = []
    app.send_task = lambda name, args, **options: sent.append((args, options))  # type: ignore[method-assign]

    send_job(app, "job-1", time_limit_s=60.0)

    [(args, options)] = sent
    assert args == ["job-1"]
    assert 60.0 < options["soft_time_limit"] < options["time_limit"]  # type: ignore[operator]


def test_the_worker_root_builds_each_part_from_one_settings_on_first_use(tmp_path: Path) -> None:
    root = WorkerRoot(make_settings(tmp_path, broker_url="memory://", queue="q-root"))

    assert root.queue == "q-root"
    assert root.celery_app.conf.task_default_queue == "q-root"
    assert "engine" not in vars(root)  # a prefork parent that loads the app holds no engine

    context = root.runner_context()

    assert (context.settings, context.sessions) == (root.settings, root.sessions)
    assert root.sessions.kw["bind"] is root.engine
    assert root.engine.url.render_as_string() == root.settings.resolved_database_url
