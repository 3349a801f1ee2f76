"""What the API needs from the broker: send "run job X" (after commit) and say if it is up."""

from __future__ import annotations

from typing import Any, Protocol

from lrprobe.service import broker
from lrprobe.service.settings import Settings


class JobQueue(Protocol):
    def send(self, job_id: str, time_limit_s: float | None) -> None: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


class CeleryQueue:
    """The production and embedded queue: Celery on the configured broker."""

    def __init__(self, settings: Settings) -> None:
        self.app: Any = broker.make_celery(settings)

    def send(self, job_id: str, time_limit_s: float | None) -> None:
        broker.send_job(self.app, job_id, time_limit_s=time_limit_s)

    def ping(self) -> bool:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception:
            return False

    def close(self) -> None:
        self.app.close()
