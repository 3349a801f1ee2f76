"""Limits that hold across API replicas (issue 16): the open event streams of one key
(``LRPROBE_MAX_STREAMS_PER_KEY``) and the failed-authentication throttle of one address, both
kept in Redis when it is configured and in the process without it. Real uvicorn servers, real
PostgreSQL and Redis; a stream is open once its response headers have arrived."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from lrprobe.client import Client
from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service import keys
from lrprobe.service.app import create_app
from lrprobe.service.stream_limit import RedisStreamLimit
from tests.service.api_support import RecordingQueue
from tests.service.live_app import LiveApp, redis_url, serve
from tests.service.test_dashboard import _token
from tests.service.test_event_channel import SSE, _submit
from tests.support.settings import make_settings

# How long a freed slot may take to be seen free (the server notices a closed connection).
FREED_WITHIN = 10.0


def _key(live: LiveApp) -> str:
    return keys.create_key(live.services.sessions, ApiKeyCreate(name="s")).secret


def _client(live: LiveApp, secret: str) -> httpx.Client:
    return httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {secret}"},
                        timeout=httpx.Timeout(10.0, read=10.0))  # fmt: skip


@contextmanager
def _stream(client: httpx.Client, job: str) -> Iterator[httpx.Response]:
    """An open event stream (its slot is taken before the headers are sent)."""
    with client.stream("GET", f"/v1/jobs/{job}/events", headers=SSE) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["cache-control"] == "no-store"
        yield response


def _refused(client: httpx.Client, job: str) -> None:
    response = client.get(f"/v1/jobs/{job}/events", headers=SSE)
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "too_many_streams"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["cache-control"] == "no-store"


def _opens_once_freed(stack: ExitStack, client: httpx.Client, job: str) -> None:
    """Open a stream as soon as a slot is free again (refused until then)."""
    deadline = time.monotonic() + FREED_WITHIN
    while True:
        response = stack.enter_context(client.stream("GET", f"/v1/jobs/{job}/events", headers=SSE))
        if response.status_code == 200:
            return
        assert response.status_code == 429
        assert time.monotonic() < deadline, "the closed stream's slot was never given back"
        time.sleep(0.05)


@pytest.mark.parametrize("with_redis", [False, True], ids=["in-process", "redis"])
def test_a_key_holds_at_most_its_cap_of_open_streams(
    migrated_postgres: str, tmp_path: Path, with_redis: bool
) -> None:
    extra = {"redis_url": redis_url()} if with_redis else {}
    settings = make_settings(tmp_path, migrated_postgres, max_streams_per_key=2, **extra)
    with ExitStack() as stack:
        live = stack.enter_context(serve(settings))
        a = stack.enter_context(_client(live, _key(live)))
        b = stack.enter_context(_client(live, _key(live)))
        job, other_job = _submit(live, a), _submit(live, a)
        # Given a key that holds two open streams (on two jobs)
        first = stack.enter_context(ExitStack())
        first.enter_context(_stream(a, job))
        stack.enter_context(_stream(a, other_job))
        # Then a third is refused, with Retry-After, on either job
        _refused(a, job)
        _refused(a, other_job)
        # while polling the same route goes on, and another key streams freely
        assert a.get(f"/v1/jobs/{job}/events").status_code == 200
        stack.enter_context(_stream(b, _submit(live, b)))
        # When one stream is closed, its slot is given back
        first.close()
        _opens_once_freed(stack, a, job)
        _refused(a, job)


def test_two_replicas_share_one_keys_stream_cap(migrated_postgres: str, tmp_path: Path) -> None:
    url = redis_url()
    with ExitStack() as stack:
        one, two = (
            stack.enter_context(serve(make_settings(tmp_path / f"r{n}", migrated_postgres,
                                                    max_streams_per_key=2, redis_url=url)))
            for n in range(2)
        )  # fmt: skip
        secret = _key(one)
        on_one, on_two = (stack.enter_context(_client(live, secret)) for live in (one, two))
        job = _submit(one, on_one)
        # Given one stream of the key on each replica
        held = stack.enter_context(ExitStack())
        held.enter_context(_stream(on_one, job))
        stack.enter_context(_stream(on_two, job))
        # Then neither replica opens a third
        _refused(on_one, job)
        _refused(on_two, job)
        # When the stream on replica one is closed, replica two may open one
        held.close()
        _opens_once_freed(stack, on_two, job)
        _refused(on_one, job)


def test_a_stopping_server_gives_back_the_slots_of_its_open_streams(
    migrated_postgres: str, tmp_path: Path
) -> None:
    url = redis_url()

    def settings(n: int) -> Any:
        return make_settings(tmp_path / f"r{n}", migrated_postgres, max_streams_per_key=1,
                             redis_url=url)  # fmt: skip

    with ExitStack() as stack:
        survivor = stack.enter_context(serve(settings(0)))
        secret = _key(survivor)
        client = stack.enter_context(_client(survivor, secret))
        job = _submit(survivor, client)
        # Given the key's one stream, open on a replica
        server = serve(settings(1), graceful_s=0.2)
        leaving = server.__enter__()
        stopped = False
        try:
            on_leaving = stack.enter_context(_client(leaving, secret))
            stack.enter_context(_stream(on_leaving, job))  # the client keeps the connection
            _refused(client, job)
            # When that replica stops, cancelling the stream after its grace period (as
            # lrprobe serve does)
            server.__exit__(None, None, None)
            stopped = True
        finally:
            if not stopped:
                server.__exit__(None, None, None)
        # Then the slot is free at once, not after its expiry in Redis
        stack.enter_context(_stream(client, job))


def test_slots_of_a_process_that_died_expire_and_a_live_ones_are_kept() -> None:
    url = redis_url()
    key = uuid.uuid4().hex

    async def run() -> None:
        dead = RedisStreamLimit(1, url, slot_ttl_s=0.5)
        alive = RedisStreamLimit(1, url, slot_ttl_s=60.0)
        try:
            # Given a process that took the key's one slot and died without giving it back
            assert await dead.acquire(key) is not None
            await dead.client.aclose()
            # Then the slot is refused until it expires, then free
            assert await alive.acquire(key) is None
            deadline = time.monotonic() + 10
            while (slot := await alive.acquire(key)) is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            # and a live process's refresh pushes its slot's expiry back
            name = alive.PREFIX + key
            before = await alive.client.zscore(name, slot.token)
            await asyncio.sleep(0.01)
            await alive.refresh()
            assert await alive.client.zscore(name, slot.token) > before
            await alive.release(slot)
            assert await alive.client.exists(name) == 0
        finally:
            await alive.close()

    asyncio.run(run())


def test_sdk_wait_polls_when_the_key_holds_all_its_streams(
    migrated_postgres: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, migrated_postgres, max_streams_per_key=1)
    with ExitStack() as stack:
        live = stack.enter_context(serve(settings))
        secret = _key(live)
        raw = stack.enter_context(_client(live, secret))
        held, waited = _submit(live, raw), _submit(live, raw)
        stack.enter_context(_stream(raw, held))
        lrp = stack.enter_context(Client(live.url, api_key=secret))
        job = lrp.get_job(waited)
        assert raw.post(f"/v1/jobs/{waited}/cancel").status_code == 200
        # The stream is refused (too_many_streams): wait() polls instead of raising
        assert job.wait(timeout=30, progress=False, poll_interval=0.05).status == "cancelled"


# --- the failed-authentication throttle -----------------------------------------------------


@contextmanager
def _replicas(url: str, tmp_path: Path, address: str, **overrides: Any) -> Iterator[list[Any]]:
    """Two apps on one database; each client comes from ``address``."""
    with ExitStack() as stack:
        clients = []
        for n in range(2):
            settings = make_settings(tmp_path / f"replica{n}", url, **overrides)
            app = create_app(settings, queue=RecordingQueue())
            clients.append(stack.enter_context(TestClient(app, client=(address, 50000))))
        yield clients


def test_failed_authentication_is_throttled_across_replicas(
    migrated_postgres: str, tmp_path: Path
) -> None:
    address = f"198.51.100.{uuid.uuid4().int % 250 + 1}-{uuid.uuid4().hex[:6]}"
    with _replicas(migrated_postgres, tmp_path, address, sign_in_failures_per_minute=3,
                   redis_url=redis_url()) as (a, b):  # fmt: skip
        sessions = a.app.state.services.sessions  # type: ignore[attr-defined]
        secret = keys.create_key(sessions, ApiKeyCreate(name="k")).secret
        guess = {"Authorization": "Bearer lrp_guess"}
        # Given three wrong keys from one address, spread over two replicas
        for client in (a, b, a):
            assert client.get("/v1/jobs", headers=guess).status_code == 401
        # Then both refuse that address before looking its next key up, right keys included
        for client in (b, a):
            response = client.get("/v1/jobs", headers=guess)
            assert response.status_code == 429, response.text
            assert response.json()["code"] == "rate_limited"
            assert 1 <= int(response.headers["retry-after"]) <= 60
        right = b.get("/v1/jobs", headers={"Authorization": f"Bearer {secret}"})
        assert right.status_code == 429
        # and the dashboard's sign-in too
        page = b.get("/ui/sign-in")
        answer = b.post("/ui/sign-in", data={"api_key": secret, "csrf": _token(page.text)})
        assert answer.status_code == 429 and answer.headers["retry-after"]


def test_without_redis_the_throttle_counts_per_process(
    migrated_postgres: str, tmp_path: Path
) -> None:
    address = f"failed-{uuid.uuid4().hex[:8]}"
    with _replicas(migrated_postgres, tmp_path, address, sign_in_failures_per_minute=2) as (
        a,
        b,
    ):
        guess = {"Authorization": "Bearer lrp_guess"}
        assert [a.get("/v1/jobs", headers=guess).status_code for _ in range(3)] == [401, 401, 429]
        assert b.get("/v1/jobs", headers=guess).status_code == 401


def test_a_finished_jobs_stream_ends_and_gives_its_slot_back(
    migrated_postgres: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, migrated_postgres, max_streams_per_key=1)
    with ExitStack() as stack:
        live = stack.enter_context(serve(settings))
        client = stack.enter_context(_client(live, _key(live)))
        job = _submit(live, client)
        assert client.post(f"/v1/jobs/{job}/cancel").status_code == 200
        for _ in range(3):  # each ends with the job's end event, and frees the one slot
            response = client.get(f"/v1/jobs/{job}/events", headers=SSE)
            assert response.status_code == 200, response.text
            assert response.headers["cache-control"] == "no-store"
            assert response.text.rstrip().endswith('event: end\ndata: {"status": "cancelled"}')
