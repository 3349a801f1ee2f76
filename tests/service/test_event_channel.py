"""Job events reach open streams through a notification channel, not by polling per stream:
Redis pub/sub in production, one shared sweep per API process in the embedded mode (SQLite,
no Redis). Resuming after Last-Event-ID reads what was missed from the database."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from lrprobe.client.schemas import ApiKeyCreate
from lrprobe.service import events, keys, lifecycle
from lrprobe.service.db import make_engine, make_sessionmaker
from lrprobe.service.notify import notifier_for
from tests.service.api_support import probe_result, safetensors_mlp
from tests.service.live_app import LiveApp, redis_url, serve
from tests.support.databases import sqlite_copy
from tests.support.settings import make_settings

SSE = {"Accept": "text/event-stream"}


def _next_event(lines: Iterator[str]) -> dict[str, str]:
    """The next event of the stream (skips the retry field and keep-alives)."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "event" in fields:
                return fields
            fields = {}
        elif not line.startswith(":") and ": " in line:
            name, value = line.split(": ", 1)
            fields[name] = value
    raise AssertionError("the stream ended")


def _submit(live: LiveApp, client: httpx.Client) -> str:
    model = client.post("/v1/models", files={"file": ("m.safetensors", safetensors_mlp())})
    assert model.status_code == 201, model.text
    body = {"model_id": model.json()["id"], "data": "builtin://digits", "loss": "cross_entropy"}
    job = client.post("/v1/jobs", json=body)
    assert job.status_code == 202, job.text
    return str(job.json()["id"])


def _client(live: LiveApp) -> httpx.Client:
    secret = keys.create_key(live.services.sessions, ApiKeyCreate(name="a")).secret
    # A stream that missed its notification would wait forever: the read timeout fails it.
    return httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {secret}"},
                        timeout=httpx.Timeout(10.0, read=10.0))  # fmt: skip


def test_job_events_reach_an_open_stream_through_redis_and_resume_after_last_event_id(
    migrated_postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an API process on Redis whose fallback sweep never runs in this test's time,
    monkeypatch.setattr(events, "SLOW_SWEEP_SECONDS", 3600.0)
    settings = make_settings(tmp_path, migrated_postgres, redis_url=redis_url())
    # and a worker announcing its commits on the same Redis, as workers do
    notifier = notifier_for(settings.resolved_redis_url)
    assert notifier is not None
    engine = make_engine(migrated_postgres)
    worker = make_sessionmaker(engine, notifier)
    with ExitStack() as cleanup:
        cleanup.callback(engine.dispose)
        cleanup.callback(notifier.close)
        live = cleanup.enter_context(serve(settings))
        client = cleanup.enter_context(_client(live))
        # (subscribed: the hub wakes every stream once when its subscription starts)
        while not live.services.events.listening:
            time.sleep(0.01)
        job = _submit(live, client)
        with client.stream("GET", f"/v1/jobs/{job}/events", headers=SSE) as stream:
            lines = stream.iter_lines()
            assert json.loads(_next_event(lines)["data"])["status"] == "queued"
            # When the worker claims the job, the stream hears of it
            lifecycle.claim(worker, job, "w1", lease=60)
            assert json.loads(_next_event(lines)["data"])["status"] == "running"
            # While nothing happens, the open stream costs no query
            before = len(live.queries)
            time.sleep(1.0)
            assert live.queries[before:] == []
            lifecycle.heartbeat(worker, job, "w1", 60, lifecycle.Progress(1, 4, "trajectory"))
            progress = _next_event(lines)
            assert (progress["event"], json.loads(progress["data"])["done"]) == ("progress", 1)
        # Then, after a disconnection, the stream resumes after the last event it delivered
        lifecycle.heartbeat(worker, job, "w1", 60, lifecycle.Progress(2, 4, "trajectory"))
        lifecycle.succeed(worker, job, "w1", probe_result(), "gn-probe/0.2")
        resumed = client.get(
            f"/v1/jobs/{job}/events", headers=SSE | {"Last-Event-ID": progress["id"]}
        )
    replay = list(_all_events(resumed.text))
    assert [(e["event"], json.loads(e["data"]).get("status")) for e in replay] == [
        ("progress", None), ("status", "succeeded"), ("end", "succeeded"),
    ]  # fmt: skip
    assert json.loads(replay[0]["data"])["done"] == 2


def _all_events(text: str) -> Iterator[dict[str, str]]:
    lines = iter(text.split("\n"))
    while True:
        try:
            yield _next_event(lines)
        except AssertionError:
            return


def test_embedded_streams_without_redis_share_one_sweep_and_follow_another_process(
    sqlite_template: Path, tmp_path: Path
) -> None:
    # Given the embedded mode: SQLite, no Redis, a worker that announces nothing
    url = sqlite_copy(sqlite_template, tmp_path / "lrprobe.sqlite")
    settings = make_settings(tmp_path, url)
    assert settings.resolved_redis_url is None
    engine = make_engine(url)
    worker = make_sessionmaker(engine)
    with ExitStack() as cleanup:
        cleanup.callback(engine.dispose)
        live = cleanup.enter_context(serve(settings))
        client = cleanup.enter_context(_client(live))
        hub = live.services.events
        jobs = [_submit(live, client) for _ in range(8)]
        with contextlib.ExitStack() as streams:
            followed = []
            for job in jobs:
                stream = streams.enter_context(
                    client.stream("GET", f"/v1/jobs/{job}/events", headers=SSE)
                )
                lines = stream.iter_lines()
                assert json.loads(_next_event(lines)["data"])["status"] == "queued"
                followed.append(lines)
            while hub.watching < len(jobs):
                time.sleep(0.01)
            # When eight streams sit on idle jobs, the process runs the one sweep for all of
            # them, and no query per stream
            time.sleep(0.3)  # each stream's read after it started watching is done by now
            sweeps, before = hub.sweeps, len(live.queries)
            time.sleep(1.0)
            idle_queries = len(live.queries) - before
            assert idle_queries <= hub.sweeps - sweeps + 1, live.queries[before:]
            # and a change committed by another process reaches its stream through the sweep
            lifecycle.request_cancel(worker, jobs[3])
            event = _next_event(followed[3])
            assert json.loads(event["data"])["status"] == "cancelled"
            assert _next_event(followed[3])["event"] == "end"
