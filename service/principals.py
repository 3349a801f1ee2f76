"""The API key → principal cache, so that a request authenticates without a database query.

Revocation stays effective within a stated bound: an entry lives ``ttl_s`` seconds at most
(``LRPROBE_AUTH_CACHE_SECONDS``), a key revoked through this process is dropped at once, and with
Redis a revocation is announced to every API process (:mod:`lrprobe.service.notify`), which drop
it on receipt. Only live keys are cached: an unknown or revoked secret is looked up every time
(the limit on failed sign-ins is what bounds that).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from lrprobe.service.keys import Principal

MAX_ENTRIES = 10_000


class PrincipalCache:
    def __init__(
        self,
        ttl_s: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        # secret hash → (principal, expiry); oldest first, so the LRU end is popped when full.
        self._entries: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, secret_hash: str) -> Principal | None:
        """The cached principal, or None (not cached, or expired)."""
        if self.ttl_s <= 0:
            return None
        with self._lock:
            entry = self._entries.get(secret_hash)
            if entry is None:
                return None
            if entry[1] <= self.clock():
                del self._entries[secret_hash]
                return None
            self._entries.move_to_end(secret_hash)
            return entry[0]

    def put(self, secret_hash: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[secret_hash] = (principal, self.clock() + self.ttl_s)
            self._entries.move_to_end(secret_hash)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def drop_key(self, key_id: str) -> None:
        """Forget every secret of ``key_id`` (it was revoked)."""
        with self._lock:
            for digest in [d for d, (p, _) in self._entries.items() if p.id == key_id]:
                del self._entries[digest]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
