"""The API's two busiest reads, ``GET /v1/jobs/{id}`` and ``GET /v1/jobs``, as coroutines.

- :class:`PostgresJobReads` runs the statements of :mod:`lrprobe.service.jobs` (compiled once
  for psycopg) on the event loop through :class:`~lrprobe.service.pg_pool.AsyncPgPool`: no
  thread-pool hop, no session, no ORM result layer;
- :class:`ThreadedJobReads` runs the same use cases through a session in the thread pool (the
  embedded mode's SQLite, whose driver has no async API).

The statements, the ownership check, the page logic and the JSON are the use cases' own
(``jobs.job_query``/``job_json``, ``jobs.page_query``/``page_items``), so both answer alike
(``tests/service/test_job_reads.py`` checks it on both databases).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic_core import to_json
from sqlalchemy import Select
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from lrprobe.service import jobs
from lrprobe.service.keys import Principal
from lrprobe.service.lifecycle import JobStatus
from lrprobe.service.pg_pool import AsyncPgPool


class JobReads(Protocol):
    async def job(self, owner: Principal, job_id: str) -> bytes:
        """JobOut's JSON (404 ``job_not_found`` if ``owner`` has no such job)."""
        ...

    async def page(
        self,
        owner: Principal,
        *,
        status: JobStatus | None,
        text: str | None,
        run: str | None,
        cursor: str | None,
        limit: int,
    ) -> bytes:
        """JobPage's JSON (see :func:`lrprobe.service.jobs.page_query`)."""
        ...


class ThreadedJobReads:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    async def job(self, owner: Principal, job_id: str) -> bytes:
        return await run_in_threadpool(jobs.get_job_json, self.sessions, owner, job_id)

    async def page(
        self,
        owner: Principal,
        *,
        status: JobStatus | None,
        text: str | None,
        run: str | None,
        cursor: str | None,
        limit: int,
    ) -> bytes:
        return await run_in_threadpool(
            lambda: jobs.list_jobs_json(
                self.sessions, owner, status=status, text=text, run=run, cursor=cursor,
                limit=limit,
            )
        )  # fmt: skip


class PostgresJobReads:
    def __init__(self, pool: AsyncPgPool) -> None:
        self.pool = pool
        self._dialect = psycopg_dialect()
        # compiled SQL by statement: the use cases build each statement once (a text search
        # builds its own, compiled for that request only)
        self._compiled: dict[int, tuple[Select[Any], Any]] = {}

    async def job(self, owner: Principal, job_id: str) -> bytes:
        query, params = jobs.job_query(owner, job_id)
        rows = await self._fetch(query, params, keep=True)
        return jobs.job_json(rows, job_id)

    async def page(
        self,
        owner: Principal,
        *,
        status: JobStatus | None,
        text: str | None,
        run: str | None,
        cursor: str | None,
        limit: int,
    ) -> bytes:
        limit = max(1, min(limit, jobs.MAX_PAGE))
        query, params = jobs.page_query(owner, status, text, run, cursor, limit)
        searching = bool((text or "").strip())
        rows = await self._fetch(query, params, keep=not searching)
        items, next_cursor = jobs.page_items(rows, limit)
        return to_json({"items": items, "next_cursor": next_cursor})

    async def _fetch(self, query: Select[Any], params: dict[str, Any], *, keep: bool) -> list[Any]:
        entry = self._compiled.get(id(query))
        if entry is None or entry[0] is not query:
            entry = (query, query.compile(dialect=self._dialect))
            if keep:
                self._compiled[id(query)] = entry
        compiled = entry[1]
        values = compiled.construct_params({k: _bind(v) for k, v in params.items()})
        return await self.pool.fetch(compiled.string, dict(values))


def _bind(value: Any) -> Any:
    # The datetime columns hold naive UTC (models.UTCDateTime does this for the ORM): an aware
    # value would make PostgreSQL compare in timestamptz, past the (owner, created_at) index.
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value
