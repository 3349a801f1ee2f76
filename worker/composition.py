"""The worker side's composition root: settings → database engine, sessions, Celery app and
queue name.

The Celery app module (``lrprobe.worker.celery_app``), the task (``lrprobe.worker.tasks``) and
the reaper all take what they use from a :class:`WorkerRoot`, so they agree on the database,
the broker and the queue. It imports no torch: the reaper does not need it. Each part is built
on first use: the Celery app module is imported by a prefork pool's parent, and a database
engine must not cross the fork into its children.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service.broker import make_celery
from lrprobe.service.db import STATEMENT_TIMEOUT_SECONDS, make_engine, make_sessionmaker
from lrprobe.service.notify import notifier_for
from lrprobe.service.settings import Settings


@dataclass(frozen=True)
class WorkerContext:
    """What :func:`lrprobe.worker.runner.run_job` needs; built once per process."""

    settings: Settings
    sessions: sessionmaker[Session]
    name: str  # this process, as shown in lease_owner

    @classmethod
    def create(cls, settings: Settings, sessions: sessionmaker[Session]) -> WorkerContext:
        return cls(settings, sessions, f"{socket.gethostname()}:{os.getpid()}")


class WorkerRoot:
    """What a worker or reaper process is built from, for one :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def queue(self) -> str:
        """Where the API and the reaper send jobs and where workers listen."""
        return self.settings.queue

    @functools.cached_property
    def engine(self) -> Engine:
        return make_engine(
            self.settings.resolved_database_url, statement_timeout_s=STATEMENT_TIMEOUT_SECONDS
        )

    @functools.cached_property
    def sessions(self) -> sessionmaker[Session]:
        # Job events are announced after each commit, so open event streams follow at once.
        return make_sessionmaker(self.engine, notifier_for(self.settings.resolved_redis_url))

    @functools.cached_property
    def celery_app(self) -> Celery:
        return make_celery(self.settings)

    def runner_context(self) -> WorkerContext:
        """What the job runner needs, named for this process."""
        return WorkerContext.create(self.settings, self.sessions)


@functools.cache
def from_environment() -> WorkerRoot:
    """The process's root, from ``LRPROBE_*`` environment variables (built once)."""
    return WorkerRoot(Settings())
