"""The Celery app that workers and beat load: ``celery -A lrprobe.worker.celery_app worker``.

Settings come from the environment (``LRPROBE_*``); ``LRPROBE_QUEUE`` names the queue (default
``lrprobe``) when several deployments share one broker.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_init

from lrprobe.service.broker import DEFAULT_QUEUE, make_celery
from lrprobe.service.settings import Settings
from lrprobe.worker import lifeline
from lrprobe.worker.tasks import register

app = make_celery(Settings(), queue=os.environ.get("LRPROBE_QUEUE", DEFAULT_QUEUE))
register(app)


@worker_init.connect
def _attach_to_serve(**_: Any) -> None:
    """Under ``lrprobe serve``: one worker per data dir, gone when serve is."""
    lifeline.attach()
