"""A small asyncio pool of psycopg connections for the API's hot reads on PostgreSQL.

The job reads (``GET /v1/jobs/{id}``, ``GET /v1/jobs``) run on the event loop through this pool
instead of a SQLAlchemy session in the thread pool: the thread-pool hop and SQLAlchemy's layers
cost 0.55 ms of CPU per read, the query itself 0.08 ms (``bench.load``; README, *Where the time
goes*). Writes and everything else keep the sessions.

Why not psycopg_pool: its connections are opened by background tasks that retry with backoff,
so during an outage a request waits out the pool's timeout, and after one the pool may still be
backing off. Here a request that needs a connection opens it itself, so:

- PostgreSQL down: the connect fails at once (refused) or after ``connect_timeout_s``, and the
  request gets its 503 (``OperationalError``, handled in ``lrprobe.service.app``);
- PostgreSQL back: the next request connects;
- a pooled connection dropped meanwhile (a restart, an idle cut by a proxy): the read is retried
  once on a new connection (reads only: a retry is harmless), so no request sees it;
- every connection is replaced after ``RECYCLE_SECONDS``, like the engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from psycopg.types.datetime import TimestamptzBinaryLoader
from psycopg.types.json import set_json_loads
from pydantic_core import from_json
from sqlalchemy.engine import make_url

from lrprobe.service.db import CONNECT_TIMEOUT_SECONDS, RECYCLE_SECONDS


class PoolTimeoutError(psycopg.OperationalError):
    """Every connection stayed busy for the whole connect timeout (answered as a 503)."""


def conninfo_for(sqlalchemy_url: str) -> str:
    """The libpq URL of a ``postgresql+psycopg://`` SQLAlchemy URL."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class AsyncPgPool:
    """At most ``size`` autocommit connections, opened on demand and kept open."""

    def __init__(
        self,
        conninfo: str,
        size: int,
        *,
        statement_timeout_s: float | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self.conninfo = conninfo
        self.connect_timeout_s = connect_timeout_s
        self.options = "-c TimeZone=UTC"
        if statement_timeout_s is not None:
            self.options += f" -c statement_timeout={int(statement_timeout_s * 1000)}"
        self._in_use = asyncio.Semaphore(size)
        # (connection, when it was opened), the most recently returned last
        self._idle: list[tuple[psycopg.AsyncConnection[Any], float]] = []

    async def fetch(self, query: str, params: dict[str, Any]) -> list[Any]:
        """The rows of one read-only statement (``%(name)s`` parameters), as named tuples."""
        if self._in_use.locked():  # wait_for costs a task: only when there is a wait
            try:
                await asyncio.wait_for(self._in_use.acquire(), self.connect_timeout_s)
            except TimeoutError:
                raise PoolTimeoutError(
                    f"no database connection was free within {self.connect_timeout_s:g} s"
                ) from None
        else:
            await self._in_use.acquire()
        try:
            while True:
                reused = bool(self._idle)
                if reused:
                    conn, opened = self._idle.pop()
                else:
                    conn, opened = await self._connect(), time.monotonic()
                try:
                    rows = await _run(conn, query, params)
                except psycopg.OperationalError:
                    if reused and conn.broken:
                        # dropped while it sat in the pool: try the next one, or a new one
                        await _close(conn)
                        continue
                    await self._put_back(conn, opened)
                    raise
                except Exception:
                    await self._put_back(conn, opened)
                    raise
                except BaseException:  # cancelled mid-statement: its state is unknown
                    await _close(conn)
                    raise
                await self._put_back(conn, opened)
                return rows
        finally:
            self._in_use.release()

    async def _put_back(self, conn: psycopg.AsyncConnection[Any], opened: float) -> None:
        if conn.closed or conn.broken or time.monotonic() - opened > RECYCLE_SECONDS:
            await _close(conn)
        else:
            self._idle.append((conn, opened))

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=max(1, round(self.connect_timeout_s)),
            options=self.options,
        )
        # Rows come in binary, parsed by psycopg's C loaders (its text timestamp parser took most
        # of a list page's time). The timestamp columns hold naive UTC (models.UTCDateTime);
        # binary timestamp and timestamptz are the same microsecond count, so reading them as
        # timestamptz in a UTC session gives the aware UTC datetimes the ORM gives.
        conn.adapters.register_loader("timestamp", TimestamptzBinaryLoader)
        set_json_loads(from_json, conn)  # pydantic-core's parser, 3x json.loads
        return conn

    async def close(self) -> None:
        while self._idle:
            await _close(self._idle.pop()[0])


async def _run(conn: psycopg.AsyncConnection[Any], query: str, params: dict[str, Any]) -> list[Any]:
    cursor = conn.cursor(row_factory=namedtuple_row, binary=True)
    await cursor.execute(query, params)
    return await cursor.fetchall()


async def _close(conn: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(Exception):  # already gone with its server
        await conn.close()
