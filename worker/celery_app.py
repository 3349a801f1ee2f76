"""The Celery app that workers load: ``celery -A lrprobe.worker.celery_app worker``.

Settings come from the environment (``LRPROBE_*``); ``LRPROBE_QUEUE`` names the queue (default
``lrprobe``) when several deployments share one broker: the worker consumes it, the API and the
reaper send to it.
"""

from __future__ import annotations

from lrprobe.service.broker import make_celery
from lrprobe.service.settings import Settings
from lrprobe.worker.tasks import register

app = make_celery(Settings())
register(app)
