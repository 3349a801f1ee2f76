"""The Celery app that workers load: ``celery -A lrprobe.worker.celery_app worker``.

Settings come from the environment (``LRPROBE_*``) through the worker's composition root
(:mod:`lrprobe.worker.composition`); ``LRPROBE_QUEUE`` names the queue (default ``lrprobe``)
when several deployments share one broker: the worker consumes it, the API and the reaper send
to it.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_init
from kombu.transport import sqlalchemy as sql_transport

from lrprobe.worker import composition, lifeline
from lrprobe.worker.tasks import register

# The embedded broker (kombu's SQLAlchemy transport on SQLite) is polled: 1 s apart by default,
# half a second of a small job's latency on average. A poll is one indexed read of a local file,
# so 50 ms costs little. It cannot go through broker_transport_options: that transport hands
# every option to create_engine.
sql_transport.Transport.polling_interval = 0.05

app = composition.from_environment().celery_app
register(app)


@worker_init.connect
def _attach_to_serve(**_: Any) -> None:
    """Under ``lrprobe serve``: one worker per data dir, gone when serve is."""
    lifeline.attach()
