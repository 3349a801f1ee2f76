"""What the API needs from the broker: send "run job X" (after commit) and say if it works."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Protocol

from lrprobe.service import broker
from lrprobe.service.settings import Settings

log = logging.getLogger(__name__)

# The queue that readiness round trips go through (never consumed by workers).
PING_QUEUE = "lrprobe.ping"
# A successful round trip is trusted this long, so that job submissions, which ask first,
# cost one round trip per few seconds at most; a failure is never cached.
PING_FRESH_SECONDS = 5.0
ROUND_TRIP_TIMEOUT_SECONDS = 5.0


class JobQueue(Protocol):
    def send(self, job_id: str, time_limit_s: float | None) -> None: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


class CeleryQueue:
    """The production and embedded queue: Celery on the configured broker."""

    def __init__(self, settings: Settings) -> None:
        self.app: Any = broker.make_celery(settings)
        # Why the last ping failed (None after a success): shown by /readyz.
        self.problem: str | None = None
        self._fresh_until = 0.0
        self._lock = threading.Lock()

    def send(self, job_id: str, time_limit_s: float | None) -> None:
        broker.send_job(self.app, job_id, time_limit_s=time_limit_s)

    def ping(self) -> bool:
        """True when a message just went through the broker and came back.

        A connection alone proves little: a corrupt ``broker.sqlite`` connects, then fails
        every read ("file is not a database").
        """
        with self._lock:
            if time.monotonic() < self._fresh_until:
                return True
            try:
                self._round_trip()
            except Exception as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self.problem = f"no round trip through the broker ({type(exc).__name__}: "
                self.problem += f"{first_line[:200]})"
                log.warning("broker ping failed: %s", self.problem)
                return False
            self.problem = None
            self._fresh_until = time.monotonic() + PING_FRESH_SECONDS
            return True

    def _round_trip(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            queue = conn.SimpleQueue(PING_QUEUE)
            try:
                queue.put({"ping": uuid.uuid4().hex})
                # Another replica's ping may come back instead of ours: any one proves it.
                queue.get(timeout=ROUND_TRIP_TIMEOUT_SECONDS).ack()
            finally:
                queue.close()

    def close(self) -> None:
        self.app.close()
