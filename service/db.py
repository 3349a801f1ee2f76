"""Engine and session factory; SQLite and PostgreSQL behave the same for the use cases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

# A PostgreSQL server that is down or unreachable must fail a request quickly (the API answers
# 503), never hang it: libpq gives up connecting after this long.
CONNECT_TIMEOUT_SECONDS = 5
# What the API, the workers and the reaper allow one statement (none of theirs needs more than
# milliseconds; a lock pile-up then surfaces as a 503 instead of a hung request).
STATEMENT_TIMEOUT_SECONDS = 30.0


def make_engine(url: str, *, statement_timeout_s: float | None = None, **kwargs: Any) -> Engine:
    """``statement_timeout_s``: PostgreSQL's statement_timeout for this engine's sessions
    (None: the server's; migrations keep it, an index build may take long)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    if statement_timeout_s is not None:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    connect_args |= kwargs.pop("connect_args", {})
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets the API read while the worker writes; busy_timeout makes writers wait for each
    # other instead of failing; foreign keys are off by default in SQLite.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
