"""Throttle on failed authentication, per client address: wrong dashboard sign-ins and unknown
or revoked API keys spend a token of the address's bucket; an address with none left gets 429
with ``Retry-After`` before its key is even looked up, so keys cannot be guessed at speed.

Each API process keeps its own buckets (as the per-key rate limit does). The table is bounded:
when it is full, buckets that have refilled are dropped first, then the oldest.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

MAX_ADDRESSES = 100_000


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

    def _tokens(self, address: str, now: float) -> float:
        tokens, last = self._buckets.get(address, (self.capacity, now))
        return min(self.capacity, tokens + (now - last) * self.rate)

    def wait(self, address: str) -> int | None:
        """Seconds ``address`` must wait before it may try again, or None if it may now."""
        now = self.clock()
        with self._lock:
            tokens = self._tokens(address, now)
        if tokens >= 1.0:
            return None
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def failed(self, address: str) -> None:
        """Record one failed attempt from ``address``."""
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


def client_address(scope_client: tuple[str, int] | None) -> str:
    """The address a request came from (uvicorn puts the proxy's client there when it trusts
    the proxy's ``X-Forwarded-For``)."""
    return scope_client[0] if scope_client else "unknown"
