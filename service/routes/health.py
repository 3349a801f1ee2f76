"""Liveness, readiness and Prometheus metrics (no authentication)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from lrprobe.client.schemas import Health, Ready
from lrprobe.service import migrate
from lrprobe.service.deps import Credentials, Services, ServicesDep, current_key
from lrprobe.service.errors import AdminRequiredError, NotFoundError
from lrprobe.service.routes import problems

router = APIRouter(tags=["health"])


def _version() -> str:
    try:
        return version("lrprobe")
    except PackageNotFoundError:
        return "0+unknown"


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (no dependency is checked)."""
    return Health(version=_version())


def _readiness(services: Services) -> Ready:
    checks: dict[str, bool] = {}
    detail: dict[str, str] = {}
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception as exc:
        checks["database"] = False
        detail["database"] = f"unreachable: {type(exc).__name__}"
    try:
        migrate.check_at_head(services.engine, services.schema_heads)
        checks["schema"] = True
    except Exception as exc:
        checks["schema"] = False
        detail["schema"] = str(exc) if checks["database"] else "unknown: database unreachable"
    checks["broker"] = services.queue.ping()
    if not checks["broker"]:
        detail["broker"] = getattr(services.queue, "problem", None) or "unreachable"
    status = "ready" if all(checks.values()) else "not_ready"
    return Ready(status=status, checks=checks, detail=detail)


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready to serve: database reachable, schema at the latest migration, and a message sent
    through the broker came back."""
    ready = await run_in_threadpool(_readiness, services)
    return JSONResponse(
        ready.model_dump(mode="json"), status_code=200 if ready.status == "ready" else 503
    )


@router.get("/metrics", response_class=Response, responses=problems(401, 403, 404))
async def metrics(request: Request, services: ServicesDep, credentials: Credentials) -> Response:
    """Prometheus exposition format. Who may read it is ``LRPROBE_METRICS_ACCESS``: ``admin``
    (the default: an admin key as Bearer token), ``open`` or ``off``."""
    access = services.settings.metrics_access
    if access == "off":
        raise NotFoundError("Metrics are off on this deployment (LRPROBE_METRICS_ACCESS=off).")
    if access == "admin":
        key = await current_key(request, services, credentials)
        if not key.admin:
            raise AdminRequiredError(
                "Metrics need an admin key on this deployment (LRPROBE_METRICS_ACCESS=admin)."
            )
    body = await run_in_threadpool(generate_latest, services.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
