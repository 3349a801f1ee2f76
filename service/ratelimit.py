"""Per-key request rate limit.

- :class:`LocalRateLimiter`: a token bucket in the API process (the embedded mode, which has one
  API process and no Redis).
- :class:`RedisRateLimiter`: one limit for all API replicas, kept in Redis by the ``limits``
  library (a sliding-window counter: one round trip per request, atomic in a Lua script).

Both answer the same question, so the 429 problem and its ``Retry-After`` do not depend on the
mode.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    async def take(self, key: str) -> int | None:
        """Count one request of ``key``: None if allowed, else seconds to wait."""
        ...

    async def close(self) -> None: ...


class LocalRateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(max(per_minute, 1))
        self.rate = self.capacity / 60.0  # tokens per second
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, last refill)
        self._lock = threading.Lock()

    async def take(self, key: str) -> int | None:
        return self.take_now(key)

    def take_now(self, key: str) -> int | None:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))

    async def close(self) -> None:
        pass


class RedisRateLimiter:
    """``per_minute`` requests per key over a sliding minute, shared through ``redis_url``.

    A process takes a key's tokens from Redis in blocks of up to half a second's worth
    (``per_minute / 120``, at most ``MAX_BLOCK``; 1 for small limits) and spends them locally
    for up to ``BLOCK_SECONDS``: under load, one round trip to Redis serves a block of requests
    (it was a fifth of a GET's CPU time). Tokens are counted in Redis when taken, so the replicas
    together never serve more than the limit; a block left unused expires, so a key may be
    refused up to a block per replica early.
    """

    NAMESPACE = "lrprobe-rate"
    MAX_BLOCK = 32
    BLOCK_SECONDS = 1.0

    def __init__(
        self, per_minute: int, redis_url: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        from limits import RateLimitItemPerMinute
        from limits.aio.strategies import SlidingWindowCounterRateLimiter

        self.per_minute = max(per_minute, 1)
        self.item = RateLimitItemPerMinute(self.per_minute, namespace=self.NAMESPACE)
        self.storage = limits_storage(redis_url)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.block = max(1, min(self.MAX_BLOCK, self.per_minute // 120))
        self.clock = clock
        self._leases: dict[str, tuple[int, float]] = {}  # key → (tokens left, expiry)

    async def take(self, key: str) -> int | None:
        now = self.clock()
        left, expiry = self._leases.get(key, (0, 0.0))
        if left > 0 and now < expiry:
            self._leases[key] = (left - 1, expiry)
            return None
        try:
            for cost in dict.fromkeys((self.block, 1)):
                if await self.limiter.hit(self.item, key, cost=cost):
                    # Requests of this key that ran meanwhile may have taken blocks too: add
                    # this one to what is left of theirs rather than drop it.
                    now = self.clock()
                    left, expiry = self._leases.get(key, (0, 0.0))
                    kept = left if now < expiry else 0
                    self._leases[key] = (kept + cost - 1, now + self.BLOCK_SECONDS)
                    return None
            stats = await self.limiter.get_window_stats(self.item, key)
        except Exception as error:
            # Redis down: serve rather than refuse every request (the limit protects capacity;
            # an outage of the limiter must not become an outage of the API).
            log.warning("rate limit not checked, Redis unavailable: %s", error)
            return None
        self._leases.pop(key, None)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def close(self) -> None:
        await close_limits_storage(self.storage)


def limits_storage(redis_url: str) -> Any:
    """A ``limits`` asyncio storage on ``redis_url`` (its database number included)."""
    from limits.aio.storage import RedisStorage

    scheme, rest = redis_url.split("://", 1)
    return RedisStorage(
        f"async+{scheme}://{rest}", implementation="redispy", socket_connect_timeout=2.0
    )


async def close_limits_storage(storage: Any) -> None:
    # limits keeps a redis-py asyncio pool: close it in this event loop.
    await storage.bridge.storage.aclose()


def rate_limiter_for(per_minute: int, redis_url: str | None) -> RateLimiter:
    if redis_url is None:
        return LocalRateLimiter(per_minute)
    return RedisRateLimiter(per_minute, redis_url)
