"""The Celery app that workers and beat load: ``celery -A lrprobe.worker.celery_app worker``.

Settings come from the environment (``LRPROBE_*``); ``LRPROBE_QUEUE`` names the queue (default
``lrprobe``) when several deployments share one broker.
"""

from __future__ import annotations

import os

from lrprobe.service.broker import DEFAULT_QUEUE, make_celery
from lrprobe.service.settings import Settings
from lrprobe.worker.tasks import register

app = make_celery(Settings(), queue=os.environ.get("LRPROBE_QUEUE", DEFAULT_QUEUE))
register(app)
