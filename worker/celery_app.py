"""The Celery app that workers and beat load: ``celery -A lrprobe.worker.celery_app worker``.

Settings come from the environment (``LRPROBE_*``); ``LRPROBE_QUEUE`` names the queue (default
``lrprobe``) when several deployments share one broker.
"""

from __future__ import annotations

import os

from kombu.transport import sqlalchemy as sql_transport

from lrprobe.service.broker import DEFAULT_QUEUE, make_celery
from lrprobe.service.settings import Settings
from lrprobe.worker.tasks import register

# The embedded broker (kombu's SQLAlchemy transport on SQLite) is polled: 1 s apart by default,
# half a second of a small job's latency on average. A poll is one indexed read of a local file,
# so 50 ms costs little. It cannot go through broker_transport_options: that transport hands
# every option to create_engine.
sql_transport.Transport.polling_interval = 0.05

app = make_celery(Settings(), queue=os.environ.get("LRPROBE_QUEUE", DEFAULT_QUEUE))
register(app)
