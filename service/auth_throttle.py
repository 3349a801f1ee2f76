"""Throttle on failed authentication, per client address: wrong dashboard sign-ins and unknown
or revoked API keys spend a token of the address's bucket; an address with none left gets 429
with ``Retry-After`` before its key is even looked up, so keys cannot be guessed at speed.

- :class:`FailedAuthThrottle`: buckets in the API process (the embedded mode: one API process,
  no Redis). The table is bounded: when it is full, buckets that have refilled are dropped
  first, then the oldest.
- :class:`RedisAuthThrottle`: one count per address for all API replicas, kept in Redis by the
  ``limits`` library as the per-key rate limit is (:mod:`lrprobe.service.ratelimit`), so a
  guesser gains nothing by spreading attempts over replicas.

Only lookups are throttled: a key this process authenticated a moment ago (the principal
cache) is not looked up again, so it costs no round trip to Redis either.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from lrprobe.service.ratelimit import close_limits_storage, limits_storage

log = logging.getLogger(__name__)

MAX_ADDRESSES = 100_000


class AuthThrottle(Protocol):
    async def wait(self, address: str) -> int | None:
        """Seconds ``address`` must wait before it may try again, or None if it may now."""
        ...

    async def failed(self, address: str) -> None:
        """Record one failed attempt from ``address``."""
        ...

    async def close(self) -> None: ...


class FailedAuthThrottle:
    def __init__(
        self,
        failures_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.capacity = float(max(failures_per_minute, 1))
        self.rate = self.capacity / 60.0  # tokens per second
        self.clock = clock
        self.max_addresses = max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}  # address → (tokens, last refill)
        self._lock = threading.Lock()

    async def wait(self, address: str) -> int | None:
        return self.wait_now(address)

    async def failed(self, address: str) -> None:
        self.failed_now(address)

    async def close(self) -> None:
        pass

    def _tokens(self, address: str, now: float) -> float:
        tokens, last = self._buckets.get(address, (self.capacity, now))
        return min(self.capacity, tokens + (now - last) * self.rate)

    def wait_now(self, address: str) -> int | None:
        now = self.clock()
        with self._lock:
            tokens = self._tokens(address, now)
        if tokens >= 1.0:
            return None
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def failed_now(self, address: str) -> None:
        now = self.clock()
        with self._lock:
            tokens = self._tokens(address, now)
            self._buckets.pop(address, None)  # re-inserted last: dicts keep insertion order
            if len(self._buckets) >= self.max_addresses:
                self._evict(now)
            self._buckets[address] = (max(0.0, tokens - 1.0), now)

    def _evict(self, now: float) -> None:
        full = [a for a in self._buckets if self._tokens(a, now) >= self.capacity]
        for address in full:
            del self._buckets[address]
        while len(self._buckets) >= self.max_addresses:
            del self._buckets[next(iter(self._buckets))]


class RedisAuthThrottle:
    """``failures_per_minute`` failed attempts per address over a sliding minute, shared
    through ``redis_url``. Failures are rare for honest clients, so each one is a round trip
    (no blocks of tokens as the rate limit takes)."""

    NAMESPACE = "lrprobe-auth-failures"

    def __init__(self, failures_per_minute: int, redis_url: str) -> None:
        from limits import RateLimitItemPerMinute
        from limits.aio.strategies import SlidingWindowCounterRateLimiter

        self.item = RateLimitItemPerMinute(max(failures_per_minute, 1), namespace=self.NAMESPACE)
        self.storage = limits_storage(redis_url)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)

    async def wait(self, address: str) -> int | None:
        try:
            if await self.limiter.test(self.item, address):
                return None
            stats = await self.limiter.get_window_stats(self.item, address)
        except Exception as error:
            # As the rate limit does: an outage of Redis must not lock every client out.
            log.warning("failed-authentication throttle not checked, Redis unavailable: %s", error)
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def failed(self, address: str) -> None:
        try:
            await self.limiter.hit(self.item, address)
        except Exception as error:
            log.warning("failed authentication not counted, Redis unavailable: %s", error)

    async def close(self) -> None:
        await close_limits_storage(self.storage)


def auth_throttle_for(failures_per_minute: int, redis_url: str | None) -> AuthThrottle:
    if redis_url is None:
        return FailedAuthThrottle(failures_per_minute)
    return RedisAuthThrottle(failures_per_minute, redis_url)


def client_address(scope_client: tuple[str, int] | None) -> str:
    """The address a request came from (uvicorn puts the proxy's client there when it trusts
    the proxy's ``X-Forwarded-For``)."""
    return scope_client[0] if scope_client else "unknown"
