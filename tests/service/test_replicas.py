"""Two API instances side by side, as replicas behind a load balancer: one rate limit per key
across both (kept in Redis), and a revoked key refused by both within the stated bound although
each caches the keys it has authenticated."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service import keys
from lrprobe.service.app import create_app
from tests.reliability.servers import wait_until
from tests.service.api_support import RecordingQueue
from tests.service.live_app import redis_url
from tests.support.settings import make_settings


@contextmanager
def replicas(url: str, tmp_path: Path, **overrides: Any) -> Iterator[list[TestClient]]:
    with ExitStack() as stack:
        clients = []
        for n in range(2):
            settings = make_settings(tmp_path / f"replica{n}", url, **overrides)
            app = create_app(settings, queue=RecordingQueue())
            clients.append(stack.enter_context(TestClient(app)))
        yield clients


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _new_key(client: TestClient, admin: bool = False) -> tuple[str, str]:
    sessions = client.app.state.services.sessions  # type: ignore[attr-defined]
    created = keys.create_key(sessions, ApiKeyCreate(name="k", admin=admin))
    return created.id, created.secret


def test_two_replicas_share_one_keys_rate_limit(migrated_postgres: str, tmp_path: Path) -> None:
    with replicas(migrated_postgres, tmp_path, rate_limit_per_minute=5, redis_url=redis_url()) as (
        a,
        b,
    ):
        _, secret = _new_key(a)
        _, other = _new_key(a)
        # Given 3 requests on one replica and 2 on the other: the key's 5 per minute are spent
        for client in (a, a, b, a, b):
            assert client.get("/v1/jobs", headers=_auth(secret)).status_code == 200
        # Then the sixth is refused by either replica, with the same problem and Retry-After
        for client in (a, b):
            response = client.get("/v1/jobs", headers=_auth(secret))
            assert response.status_code == 429
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"] == "rate_limited"
            assert 1 <= int(response.headers["retry-after"]) <= 60
        # and another key is not affected
        assert b.get("/v1/jobs", headers=_auth(other)).status_code == 200


def test_without_redis_each_process_keeps_its_own_limit(
    migrated_postgres: str, tmp_path: Path
) -> None:
    # The embedded mode has one API process and no Redis: the limit is local to it.
    with replicas(migrated_postgres, tmp_path, rate_limit_per_minute=2) as (a, b):
        _, secret = _new_key(a)
        assert [a.get("/v1/jobs", headers=_auth(secret)).status_code for _ in range(3)] == [
            200, 200, 429,
        ]  # fmt: skip
        assert b.get("/v1/jobs", headers=_auth(secret)).status_code == 200


def _key_queries(client: TestClient) -> list[str]:
    """The key lookups this replica's engine runs from now on."""
    found: list[str] = []

    def spy(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "api_keys" in statement:
            found.append(statement)

    event.listen(client.app.state.services.engine, "before_cursor_execute", spy)  # type: ignore[attr-defined]
    return found


class StoppedClock:
    """A clock for replica b's key cache that moves only when the test moves it, so that
    "within the bound" is a statement about the cache's time, not about how fast this machine
    runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _stop_cache_clock(client: TestClient) -> StoppedClock:
    clock = StoppedClock()
    client.app.state.services.principals.clock = clock  # type: ignore[attr-defined]
    return clock


@pytest.mark.parametrize("with_redis", [False, True], ids=["cache-ttl", "redis-announcement"])
def test_a_revoked_key_is_refused_by_every_replica_within_the_cache_bound(
    migrated_postgres: str, tmp_path: Path, with_redis: bool
) -> None:
    # LRPROBE_AUTH_CACHE_SECONDS
    bound = 30.0
    extra = {"redis_url": redis_url()} if with_redis else {}
    with replicas(migrated_postgres, tmp_path, auth_cache_seconds=bound, **extra) as (a, b):
        clock = _stop_cache_clock(b)
        key_id, secret = _new_key(a)
        _, admin = _new_key(a, admin=True)
        # Given replica b has authenticated the key and serves it from its cache
        assert b.get("/v1/jobs", headers=_auth(secret)).status_code == 200
        lookups = _key_queries(b)
        assert b.get("/v1/jobs", headers=_auth(secret)).status_code == 200
        assert lookups == []
        # When the key is revoked through replica a
        assert a.delete(f"/v1/keys/{key_id}", headers=_auth(admin)).status_code == 200
        # Then a refuses it at once
        assert a.get("/v1/jobs", headers=_auth(secret)).status_code == 401
        if with_redis:
            # and b once the announcement arrives, while its cache's clock stands still: the
            # announcement alone ends the cached entry
            wait_until(lambda: b.get("/v1/jobs", headers=_auth(secret)).status_code == 401,
                       30, "b to drop the revoked key")  # fmt: skip
        else:
            # and b, which hears nothing, until its cached entry reaches the bound, then no more
            clock.now = bound - 0.1
            assert b.get("/v1/jobs", headers=_auth(secret)).status_code == 200
            clock.now = bound
            assert b.get("/v1/jobs", headers=_auth(secret)).status_code == 401
        # and the refusal was b's own lookup, which now finds the key revoked
        assert lookups != []


def test_replicas_taking_tokens_in_blocks_never_serve_more_than_the_limit() -> None:
    import asyncio
    import uuid

    from lrprobe.service.ratelimit import RedisRateLimiter

    async def run() -> list[int | None]:
        url = redis_url()
        # 240 per minute: each replica takes 2 tokens per round trip to Redis
        replicas = [RedisRateLimiter(240, url), RedisRateLimiter(240, url)]
        assert [r.block for r in replicas] == [2, 2]
        key = uuid.uuid4().hex
        try:
            answers: list[int | None] = []
            for _ in range(40):  # 4 requests at once on each replica
                answers += await asyncio.gather(*(r.take(key) for r in replicas for _ in range(4)))
            return answers
        finally:
            for replica in replicas:
                await replica.close()

    answers = asyncio.run(run())
    served = answers.count(None)
    # never more than the limit; blocks left unused are at most a few per replica
    assert 240 - 4 * 2 * 2 <= served <= 240
    assert all(wait is None or 1 <= wait <= 60 for wait in answers)
