"""The FastAPI application factory. Nothing is built at import time: the lifespan creates the
engine, sessions, artifact store and queue from the settings and hangs them on ``app.state``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import OperationalError as PgOperationalError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lrprobe.service import migrate
from lrprobe.service.artifacts import ArtifactStore
from lrprobe.service.auth_throttle import auth_throttle_for
from lrprobe.service.dashboard import router as dashboard_router
from lrprobe.service.db import STATEMENT_TIMEOUT_SECONDS, make_engine, make_sessionmaker
from lrprobe.service.deps import Services
from lrprobe.service.errors import (
    BadRequestError,
    MethodNotAllowedError,
    NotFoundError,
    ServiceError,
    ServiceUnavailableError,
    UnprocessableError,
)
from lrprobe.service.events import EventHub
from lrprobe.service.job_reads import JobReads, PostgresJobReads, ThreadedJobReads
from lrprobe.service.metrics import Metrics, MetricsMiddleware
from lrprobe.service.notify import notifier_for
from lrprobe.service.pg_pool import AsyncPgPool, conninfo_for
from lrprobe.service.principals import PrincipalCache
from lrprobe.service.problems import problem_response
from lrprobe.service.queue import JobQueue
from lrprobe.service.ratelimit import rate_limiter_for
from lrprobe.service.request_limits import RequestLimitsMiddleware
from lrprobe.service.routes import docs, health, jobs, keys, uploads
from lrprobe.service.security_headers import SecurityHeadersMiddleware
from lrprobe.service.settings import Settings
from lrprobe.service.stream_limit import stream_limit_for

log = logging.getLogger(__name__)

# PostgreSQL connections each API process keeps open, for each of its two pools (the engine's,
# and the job reads' async one): as many as requests it runs at once under load, so a burst
# does not open and close connections (it did with SQLAlchemy's default of 5 kept + 10 opened on
# demand).
POOL_SIZE = 16


def create_app(settings: Settings, *, queue: JobQueue | None = None) -> FastAPI:
    """The lrprobe API for ``settings``. ``queue`` replaces the Celery queue (tests).

    Startup fails if the database is not at the latest migration (run ``lrprobe migrate``;
    ``lrprobe serve`` migrates first)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.resolved_database_url
        engine = make_engine(
            url,
            statement_timeout_s=STATEMENT_TIMEOUT_SECONDS,
            pool_size=POOL_SIZE,
            ping="idle",
        )
        redis_url = settings.resolved_redis_url
        notifier = notifier_for(redis_url)
        limiter = rate_limiter_for(settings.rate_limit_per_minute, redis_url)
        throttle = auth_throttle_for(settings.sign_in_failures_per_minute, redis_url)
        streams = stream_limit_for(settings.max_streams_per_key, redis_url)
        principals = PrincipalCache(settings.auth_cache_seconds)
        own_queue = None
        hub = None
        pool = None
        try:
            heads = migrate.head_revisions()
            migrate.check_at_head(engine, heads)
            sessions = make_sessionmaker(engine, notifier)
            reads = make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))
            hub = EventHub(
                sessions, redis_url, on_key_revoked=principals.drop_key,
                on_reconnect=principals.clear,
            )  # fmt: skip
            await hub.start()
            await streams.start()
            upload_dir = (settings.data_dir / "tmp").resolve()
            upload_dir.mkdir(parents=True, exist_ok=True)
            if queue is None:
                from lrprobe.service.queue import CeleryQueue

                own_queue = CeleryQueue(settings)
            job_reads: JobReads
            if engine.dialect.name == "postgresql":
                pool = AsyncPgPool(
                    conninfo_for(url), POOL_SIZE, statement_timeout_s=STATEMENT_TIMEOUT_SECONDS
                )
                job_reads = PostgresJobReads(pool)
            else:
                job_reads = ThreadedJobReads(reads)
            app.state.services = Services(
                settings=settings,
                engine=engine,
                sessions=sessions,
                reads=reads,
                job_reads=job_reads,
                store=ArtifactStore(settings.resolved_artifact_url),
                queue=queue or own_queue,  # type: ignore[arg-type]
                limiter=limiter,
                principals=principals,
                events=hub,
                metrics=metrics,
                schema_heads=heads,
                upload_dir=upload_dir,
                throttle=throttle,
                streams=streams,
            )
            metrics.watch_jobs(sessions)
            yield
        finally:
            metrics.unwatch_jobs()
            if pool is not None:
                await pool.close()
            if hub is not None:
                await hub.stop()
            await limiter.close()
            await throttle.close()
            await streams.close()
            if notifier is not None:
                notifier.close()
            if own_queue is not None:
                own_queue.close()
            engine.dispose()

    app = FastAPI(
        title="lrprobe",
        summary="Per-layer learning rates for PyTorch models from one short grouped-Newton probe.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by routes.docs from local assets, under a CSP
        redoc_url=None,
    )
    app.add_middleware(RequestLimitsMiddleware, idle_timeout_s=settings.upload_idle_timeout_seconds)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    # The busiest routes first: a request is matched against the routes in order.
    routers = (jobs.router, health.router, docs.router, uploads.router, keys.router)
    for router in (*routers, dashboard_router):
        app.include_router(router)
    _install_error_handlers(app)
    return app


def _problem(request: Request, error: ServiceError) -> JSONResponse:
    return problem_response(error, request.url.path)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
        for e in exc.errors()
    ]


def _install_error_handlers(app: FastAPI) -> None:
    """ONE place turns every error into problem+json."""

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return _problem(request, exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = _field_errors(exc)
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "request"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        detail = f"The request is invalid: {where}: {first['msg']}{more}; see errors."
        return _problem(request, UnprocessableError(detail, errors=errors))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error: ServiceError
        if exc.status_code == 404:
            error = NotFoundError(f"There is no resource at {request.url.path}; see /docs.")
        elif exc.status_code == 405:
            error = MethodNotAllowedError(
                f"{request.method} is not allowed on {request.url.path}; see /docs."
            )
        elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            error = BadRequestError(
                "The request body could not be parsed (too deeply nested or not JSON); send one "
                "JSON object with Content-Type: application/json."
            )
        else:
            error = BadRequestError(str(exc.detail), status=exc.status_code)
        error.headers = dict(exc.headers or {})
        return _problem(request, error)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        # PgOperationalError: the job reads' own pool (lrprobe.service.pg_pool), whose errors
        # are psycopg's, not wrapped by SQLAlchemy; its pool timeout is one too.
        outage = isinstance(
            exc, OperationalError | InterfaceError | PoolTimeoutError | PgOperationalError
        ) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)
        if not outage:
            return await unexpected(request, exc)
        log.warning("database unavailable: %s", exc)
        return _problem(
            request,
            ServiceUnavailableError(
                "The database is unavailable; retry shortly.", headers={"Retry-After": "5"}
            ),
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _problem(request, ServiceError("An unexpected error occurred; it was logged."))

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(PoolTimeoutError, database_error)
    app.add_exception_handler(PgOperationalError, database_error)
    app.add_exception_handler(Exception, unexpected)
