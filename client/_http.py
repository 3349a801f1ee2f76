"""What :class:`~client.Client` and :class:`~client.AsyncClient` share below the API: where the
service is, the headers, and when a failed request may be sent again."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import httpx

from lrprobe.client._errors import ConnectionFailed

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
URL_ENV = "LRPROBE_URL"
API_KEY_ENV = "LRPROBE_API_KEY"

RETRY_STATUSES = frozenset({502, 503, 504})
# The request never left this machine: sending it again cannot do anything twice.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def resolve_url(base_url: str | None) -> str:
    return (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get(API_KEY_ENV) or None


def user_agent() -> str:
    try:
        own = version("lrprobe")
    except PackageNotFoundError:
        own = "0+unknown"
    return f"lrprobe-python/{own} httpx/{httpx.__version__}"


def headers(api_key: str | None) -> dict[str, str]:
    out = {"User-Agent": user_agent(), "Accept": "application/json"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``retries`` more attempts, waiting ``backoff · 2^attempt`` (jittered, at most
    ``max_backoff``, or the server's ``Retry-After``).

    A request that never reached the server (connection refused, connect timeout) is retried
    whatever it is. Other transport errors and 502/503/504 answers are retried only for
    idempotent requests: reads, and job submission, which carries an ``Idempotency-Key``.
    """

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0

    def after_error(
        self, error: httpx.TransportError, attempt: int, idempotent: bool, where: str
    ) -> float:
        """Seconds to wait before the next attempt; raises :class:`ConnectionFailed` if none."""
        if attempt < self.retries and (idempotent or isinstance(error, _NOT_SENT)):
            return self._delay(attempt)
        raise ConnectionFailed(
            f"could not reach the lrprobe service at {where}: "
            f"{type(error).__name__}: {error} (is LRPROBE_URL right, and the service up?)",
            code="connection_error",
        ) from error

    def after_response(
        self, response: httpx.Response, attempt: int, idempotent: bool
    ) -> float | None:
        """Seconds to wait before sending again, or None to keep this response."""
        if not (idempotent and response.status_code in RETRY_STATUSES and attempt < self.retries):
            return None
        try:
            return min(float(response.headers["Retry-After"]), self.max_backoff)
        except (KeyError, ValueError):
            return self._delay(attempt)

    def _delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2.0**attempt) * random.uniform(0.5, 1.0)
