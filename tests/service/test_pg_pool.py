"""The job reads' async PostgreSQL pool: it reuses connections, replaces one the server dropped
without the read noticing, keeps a connection after a statement error, and fails at once (an
OperationalError, answered as 503) when the server cannot be reached."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from lrprobe.service.pg_pool import AsyncPgPool, conninfo_for


def _run(postgres_url: str, body: Callable[[AsyncPgPool], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        pool = AsyncPgPool(conninfo_for(postgres_url), 4, statement_timeout_s=30)
        try:
            return await body(pool)
        finally:
            await pool.close()

    return asyncio.run(main())


async def _backend(pool: AsyncPgPool) -> int:
    [row] = await pool.fetch("SELECT pg_backend_pid() AS pid", {})
    return int(row.pid)


def test_serial_reads_share_one_connection(postgres_url: str) -> None:
    async def body(pool: AsyncPgPool) -> set[int]:
        return {await _backend(pool) for _ in range(5)}

    assert len(_run(postgres_url, body)) == 1


def test_a_connection_dropped_while_pooled_is_replaced_without_failing_the_read(
    postgres_url: str,
) -> None:
    async def body(pool: AsyncPgPool) -> tuple[int, int]:
        first = await _backend(pool)
        # the server ends it (a restart, an idle cut by a proxy) while it sits in the pool
        with psycopg.connect(conninfo_for(postgres_url), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        return first, await _backend(pool)

    first, second = _run(postgres_url, body)
    assert first != second


def test_a_statement_error_keeps_the_connection(postgres_url: str) -> None:
    async def body(pool: AsyncPgPool) -> tuple[int, int]:
        first = await _backend(pool)
        with pytest.raises(psycopg.errors.DivisionByZero):
            await pool.fetch("SELECT 1 / %(zero)s AS x", {"zero": 0})
        return first, await _backend(pool)

    first, second = _run(postgres_url, body)
    assert first == second


def test_an_unreachable_server_is_an_operational_error(postgres_url: str) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool_url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")
    assert pool_url != postgres_url

    async def body(pool: AsyncPgPool) -> None:
        with pytest.raises(psycopg.OperationalError):
            await pool.fetch("SELECT 1", {})

    _run(pool_url, body)
