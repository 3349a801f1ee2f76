"""Engine and session factory; SQLite and PostgreSQL behave the same for the use cases."""

from __future__ import annotations

import time
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from lrprobe.service.notify import NOTIFIER, Notifier

# A PostgreSQL server that is down or unreachable must fail a request quickly (the API answers
# 503), never hang it: libpq gives up connecting after this long.
CONNECT_TIMEOUT_SECONDS = 5
# What the API, the workers and the reaper allow one statement (none of theirs needs more than
# milliseconds; a lock pile-up then surfaces as a 503 instead of a hung request).
STATEMENT_TIMEOUT_SECONDS = 30.0
# With ``ping="idle"`` (the API), a pooled connection is pinged before use only if it sat idle
# for longer than this. Under load connections are never idle that long, so requests pay no
# round trip for it (a ping on every checkout was a fifth of a GET's time); after a quiet spell,
# a connection the server or a proxy dropped is replaced before a request sees it. One dropped
# while busy (a database restart under load) fails its request with a 503, and SQLAlchemy then
# replaces every connection of the pool.
IDLE_PING_SECONDS = 10.0
# Connections are replaced after this long whatever happens, so that no pooled connection
# outlives a server-side idle limit or a failover by much.
RECYCLE_SECONDS = 1800


def make_engine(
    url: str,
    *,
    statement_timeout_s: float | None = None,
    pool_size: int | None = None,
    ping: Literal["always", "idle"] = "always",
    **kwargs: Any,
) -> Engine:
    """``statement_timeout_s``: PostgreSQL's statement_timeout for this engine's sessions
    (None: the server's; migrations keep it, an index build may take long). ``pool_size``:
    connections kept open (PostgreSQL; None: SQLAlchemy's 5); the API sizes it to the requests
    it serves at once, so that a burst does not open and close connections. ``ping``: test a
    pooled connection on every checkout (workers, the reaper, the CLI: a round trip is nothing
    next to their work, and they never see a dropped connection), or only after
    ``IDLE_PING_SECONDS`` idle (the API)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    if statement_timeout_s is not None:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    connect_args |= kwargs.pop("connect_args", {})
    if pool_size is not None:
        kwargs |= {"pool_size": pool_size, "max_overflow": pool_size}
    engine = create_engine(
        url,
        pool_pre_ping=ping == "always",
        pool_recycle=RECYCLE_SECONDS,
        connect_args=connect_args,
        **kwargs,
    )
    if ping == "idle":
        event.listen(engine, "checkin", _mark_idle)
        event.listen(engine, "checkout", _ping_if_idle)
    return engine


def make_sessionmaker(engine: Engine, notifier: Notifier | None = None) -> sessionmaker[Session]:
    """``notifier``: where committed job events and key revocations are announced
    (:mod:`lrprobe.service.notify`); None: nowhere, listeners find them in the database."""
    info = {} if notifier is None else {NOTIFIER: notifier}
    return sessionmaker(engine, expire_on_commit=False, info=info)


def _mark_idle(_dbapi_connection: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
        dbapi_connection.rollback()
    except Exception as error:
        # The pool discards this connection and checks out another (a fresh one if need be).
        raise exc.DisconnectionError(f"pooled connection was dropped: {error}") from error


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets the API read while the worker writes; busy_timeout makes writers wait for each
    # other instead of failing; foreign keys are off by default in SQLite.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
