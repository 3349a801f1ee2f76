"""The cap on event streams one API key holds open at once (``LRPROBE_MAX_STREAMS_PER_KEY``).

The rate limit counts the request that opens a stream, not the stream: without a cap, one key
could hold any number of streams open, each costing the API a task, a socket and a read on
every change of its job.

- :class:`LocalStreamLimit`: a count per key in the API process (the embedded mode: one API
  process, no Redis).
- :class:`RedisStreamLimit`: one count for all API replicas. Each key has a sorted set in
  Redis with one member per open stream, scored by when it expires. The process that holds a
  stream refreshes its member every ``REFRESH_SECONDS`` (one round trip for all its streams);
  members of a process that died without giving them back expire after ``SLOT_TTL_SECONDS``,
  so a crash cannot leak slots for longer. Scores come from Redis's own clock, so replicas'
  clocks need not agree.

A slot is given back when its stream ends however it ends (the job final, the client gone,
the server cancelling it at shutdown), and a process gives back what it still holds when it
stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

SLOT_TTL_SECONDS = 60.0
REFRESH_SECONDS = 15.0
# What a refused stream is told to wait: streams end when their jobs do, which no one knows in
# advance; the SDK polls meanwhile instead.
RETRY_AFTER_SECONDS = 10


@dataclass(eq=False)
class StreamSlot:
    key: str
    token: str
    counted: bool = True  # False when Redis was unreachable and the stream went uncounted


class StreamLimit(Protocol):
    max_per_key: int

    async def start(self) -> None: ...

    async def acquire(self, key: str) -> StreamSlot | None:
        """A slot for one more stream of ``key``, or None if it holds ``max_per_key``."""
        ...

    async def release(self, slot: StreamSlot) -> None:
        """Give ``slot`` back (a second call does nothing)."""
        ...

    async def close(self) -> None: ...


class LocalStreamLimit:
    # Used only from the event loop's thread, so the counts need no lock.
    def __init__(self, max_per_key: int) -> None:
        self.max_per_key = max_per_key
        self._open: dict[str, set[StreamSlot]] = {}

    async def start(self) -> None:
        pass

    def held(self, key: str) -> int:
        return len(self._open.get(key, ()))

    async def acquire(self, key: str) -> StreamSlot | None:
        slots = self._open.setdefault(key, set())
        if len(slots) >= self.max_per_key:
            return None
        slot = StreamSlot(key, uuid.uuid4().hex)
        slots.add(slot)
        return slot

    async def release(self, slot: StreamSlot) -> None:
        slots = self._open.get(slot.key)
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del self._open[slot.key]

    async def close(self) -> None:
        self._open.clear()


# KEYS[1]: the key's set; ARGV: max per key, token, ttl in ms. 1 if taken, else 0.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1]: the key's set; ARGV: ttl in ms, then the tokens this process holds there. A member
# that expired meanwhile (a stalled process) is put back: its stream is still open.
_REFRESH = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], until_, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


class RedisStreamLimit:
    PREFIX = "lrprobe-streams:"

    def __init__(
        self,
        max_per_key: int,
        redis_url: str,
        *,
        slot_ttl_s: float = SLOT_TTL_SECONDS,
        refresh_s: float = REFRESH_SECONDS,
    ) -> None:
        import redis.asyncio as aioredis

        self.max_per_key = max_per_key
        self.ttl_ms = max(1, round(slot_ttl_s * 1000))
        self.refresh_s = refresh_s
        # Short timeouts: opening a stream must not hang on a slow Redis.
        self.client: Any = aioredis.Redis.from_url(
            redis_url, socket_connect_timeout=2.0, socket_timeout=2.0
        )
        self._acquire = self.client.register_script(_ACQUIRE)
        self._refresh = self.client.register_script(_REFRESH)
        self._held: dict[str, set[StreamSlot]] = {}
        self._task: asyncio.Task[None] | None = None

    def _name(self, key: str) -> str:
        return self.PREFIX + key

    async def start(self) -> None:
        self._task = asyncio.create_task(self._keep_alive(), name="lrprobe-stream-slots")

    async def acquire(self, key: str) -> StreamSlot | None:
        slot = StreamSlot(key, uuid.uuid4().hex)
        try:
            taken = await self._acquire(
                keys=[self._name(key)], args=[self.max_per_key, slot.token, self.ttl_ms]
            )
        except Exception as error:
            # As the rate limit does: an outage of Redis must not become an outage of streams.
            log.warning("stream not counted, Redis unavailable: %s", error)
            slot.counted = False
            return slot
        if not taken:
            return None
        self._held.setdefault(key, set()).add(slot)
        return slot

    async def release(self, slot: StreamSlot) -> None:
        slots = self._held.get(slot.key)
        if slots is None or slot not in slots:
            return
        slots.discard(slot)
        if not slots:
            del self._held[slot.key]
        try:
            await self.client.zrem(self._name(slot.key), slot.token)
        except Exception as error:
            log.warning("stream slot left to expire, Redis unavailable: %s", error)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception as error:
                log.warning("stream slots not refreshed, Redis unavailable: %s", error)

    async def refresh(self) -> None:
        """Push back the expiry of every slot this process holds (one round trip)."""
        held = [(key, [s.token for s in slots]) for key, slots in self._held.items() if slots]
        if not held:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for key, tokens in held:
                await self._refresh(keys=[self._name(key)], args=[self.ttl_ms, *tokens],
                                    client=pipe)  # fmt: skip
            await pipe.execute()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Streams the server cancelled at shutdown may not have given theirs back yet.
        held, self._held = self._held, {}
        try:
            if held:
                async with self.client.pipeline(transaction=False) as pipe:
                    for key, slots in held.items():
                        pipe.zrem(self._name(key), *(s.token for s in slots))
                    await pipe.execute()
        except Exception as error:
            log.warning("%d stream slot(s) left to expire: %s", sum(map(len, held.values())), error)
        finally:
            await self.client.aclose()


def stream_limit_for(max_per_key: int, redis_url: str | None) -> StreamLimit:
    if redis_url is None:
        return LocalStreamLimit(max_per_key)
    return RedisStreamLimit(max_per_key, redis_url)
