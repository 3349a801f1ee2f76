"""Waking event streams when their job changes, without a query per stream.

Each API process has one :class:`EventHub`. An open stream registers a flag for its job and
sleeps on it; the hub sets the flag when the job has new events, and only then does the stream
read them from the database (where resuming after ``Last-Event-ID`` also happens). An idle
stream costs no query.

The hub learns about new events in two ways:

- **Redis pub/sub** (production): workers and API processes announce each commit that records
  a job event (:mod:`lrprobe.service.notify`), so a change reaches its streams in milliseconds.
  The same channel carries key revocations, which drop the key from the principal cache.
- **A sweep**: while streams are open, one query per process reads the ids of the jobs with
  events newer than the last one it saw. Without Redis (the embedded mode) it runs every
  ``fast_sweep_s``; with Redis it is only the backstop for a lost message, every
  ``slow_sweep_s``.

After (re)subscribing to Redis, and on the first sweep after the hub was idle, every open
stream is woken once, so nothing committed in between is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from lrprobe.service.models import JobEvent
from lrprobe.service.notify import JOB_PREFIX, KEY_PREFIX, channel_name

log = logging.getLogger(__name__)

# Without Redis, how often the sweep looks for new events while streams are open (a single
# primary-key range query on job_events, for all streams of the process together).
FAST_SWEEP_SECONDS = 0.1
# With Redis, the sweep only catches what a lost message would have announced.
SLOW_SWEEP_SECONDS = 5.0
# A sweep that finds more new events than this wakes every stream instead of naming jobs.
SWEEP_LIMIT = 5_000
# Wait before reconnecting to Redis after its connection broke.
RECONNECT_SECONDS = 1.0


class EventHub:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        redis_url: str | None,
        on_key_revoked: Callable[[str], None] = lambda _key_id: None,
        on_reconnect: Callable[[], None] = lambda: None,
        *,
        sweep_s: float | None = None,
    ) -> None:
        """``sweep_s``: seconds between sweeps while streams are open (default:
        ``FAST_SWEEP_SECONDS`` without Redis, ``SLOW_SWEEP_SECONDS`` with it)."""
        self.sessions = sessions
        self.redis_url = redis_url
        self.on_key_revoked = on_key_revoked
        self.on_reconnect = on_reconnect
        if sweep_s is None:
            sweep_s = FAST_SWEEP_SECONDS if redis_url is None else SLOW_SWEEP_SECONDS
        self.sweep_s = sweep_s
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._has_watchers = asyncio.Event()
        self.sweeps = 0  # for tests and the benchmark: how many sweep queries ran
        self.listening = False  # subscribed to Redis now

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._sweep(), name="lrprobe-event-sweep"))
        if self.redis_url is not None:
            self._tasks.append(asyncio.create_task(self._listen(), name="lrprobe-event-listen"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """A flag set whenever ``job_id`` may have new events; clear it before each read."""
        flag = asyncio.Event()
        self._watchers.setdefault(job_id, set()).add(flag)
        self._has_watchers.set()
        try:
            yield flag
        finally:
            flags = self._watchers.get(job_id)
            if flags is not None:
                flags.discard(flag)
                if not flags:
                    del self._watchers[job_id]
            if not self._watchers:
                self._has_watchers.clear()

    @property
    def watching(self) -> int:
        return sum(len(flags) for flags in self._watchers.values())

    def wake(self, job_id: str) -> None:
        for flag in self._watchers.get(job_id, ()):
            flag.set()

    def wake_all(self) -> None:
        for flags in self._watchers.values():
            for flag in flags:
                flag.set()

    def _deliver(self, payload: str) -> None:
        for topic in payload.split():
            if topic.startswith(JOB_PREFIX):
                self.wake(topic[len(JOB_PREFIX) :])
            elif topic.startswith(KEY_PREFIX):
                self.on_key_revoked(topic[len(KEY_PREFIX) :])

    async def _listen(self) -> None:
        import redis.asyncio as aioredis

        assert self.redis_url is not None
        channel = channel_name(self.redis_url)
        while True:
            client: Any = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=2.0)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    # Whatever was announced while not subscribed is lost: look again.
                    self.on_reconnect()
                    self.wake_all()
                    self.listening = True
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            data = message["data"]
                            self._deliver(data.decode() if isinstance(data, bytes) else data)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("event channel lost (%s); reconnecting", error)
                await asyncio.sleep(RECONNECT_SECONDS)
            finally:
                self.listening = False
                await client.aclose()

    async def _sweep(self) -> None:
        last: int | None = None
        while True:
            if not self._watchers:
                last = None  # idle: no query at all until a stream opens
                await self._has_watchers.wait()
            try:
                self.sweeps += 1
                newest, jobs = await run_in_threadpool(_new_events, self.sessions, last)
            except Exception as error:
                log.warning("event sweep failed (%s); retrying", error)
                await asyncio.sleep(self.sweep_s)
                continue
            if jobs is None:
                # Too many to name, or the first look since idle: without Redis, an event
                # committed between a stream's first read and this look would go unseen.
                if last is not None or self.redis_url is None:
                    self.wake_all()
            else:
                for job_id in jobs:
                    self.wake(job_id)
            last = newest
            await asyncio.sleep(self.sweep_s)


def _new_events(sessions: sessionmaker[Session], after: int | None) -> tuple[int, set[str] | None]:
    """The newest event id, and the jobs with events after ``after`` (None: too many to name,
    or no ``after`` yet)."""
    with sessions() as session:
        if after is None:
            return int(session.scalar(select(func.max(JobEvent.id))) or 0), None
        rows = session.execute(
            select(JobEvent.id, JobEvent.job_id)
            .where(JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(SWEEP_LIMIT)
        ).all()
    if not rows:
        return after, set()
    newest = int(rows[-1][0])
    return newest, None if len(rows) == SWEEP_LIMIT else {job_id for _, job_id in rows}
