"""The app under a real uvicorn server in a thread, for tests that hold streams open or run two
API instances side by side (each with its own lifespan, engine, caches and event hub)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI
from sqlalchemy import event

from lrprobe.service.app import create_app
from lrprobe.service.deps import Services
from lrprobe.service.settings import Settings
from tests.service.api_support import RecordingQueue
from tests.support.databases import REDIS


def redis_url() -> str:
    """A database of the test Redis (pub/sub channels and rate-limit keys are per database)."""
    return f"{REDIS}/{random.randrange(1, 16)}"


@dataclass
class LiveApp:
    url: str
    app: FastAPI
    queue: RecordingQueue
    queries: list[str]  # every SQL statement this instance's engine ran

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services


@contextmanager
def serve(settings: Settings, graceful_s: float | None = None) -> Iterator[LiveApp]:
    """``graceful_s``: how long stopping waits for open responses before cancelling them (as
    ``lrprobe serve`` does); default: until they end."""
    queue = RecordingQueue()
    app = create_app(settings, queue=queue)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=graceful_s)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    queries: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        queries.append(statement)

    engine = app.state.services.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield LiveApp(f"http://127.0.0.1:{port}", app, queue, queries)
    finally:
        event.remove(engine, "before_cursor_execute", count)
        server.should_exit = True
        thread.join(30)
