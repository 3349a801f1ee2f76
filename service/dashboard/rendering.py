"""How the dashboard answers: Jinja templates with their globals and filters, and the route
class that turns the dashboard's errors into HTML pages (the app's handlers answer
problem+json) and adds the page headers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from lrprobe.client.schemas import JobOut
from lrprobe.rules.calibration import MOMENTUM_CALIBRATION_FACTOR, heavy_ball
from lrprobe.service.dashboard import charts
from lrprobe.service.dashboard.session import csrf_token
from lrprobe.service.errors import ServiceError
from lrprobe.service.lifecycle import JobStatus

if TYPE_CHECKING:
    from lrprobe.service.dashboard.session import DashboardSession

HERE = Path(__file__).parent
STATUSES = [s.value for s in JobStatus]
# What only HTML pages need; nosniff, no-store and HSTS come from the app's
# SecurityHeadersMiddleware, for every response.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class SignInRequiredError(Exception):
    pass


class CsrfError(Exception):
    pass


class HtmlRoute(APIRoute):
    """Turns the dashboard's errors into pages: sign-in needed → the sign-in form, a forged
    or expired form → 403, a use case's :class:`ServiceError` → its status, code and
    sentence."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequiredError:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                response = RedirectResponse(
                    f"/ui/sign-in?{urlencode({'next': target})}", status_code=303
                )
            except CsrfError:
                response = error_page(
                    request, 403, "csrf_failed",
                    "The form expired or did not come from this dashboard; reload the page and "
                    "try again.",
                )  # fmt: skip
            except ServiceError as exc:
                response = error_page(request, exc.status, exc.code, exc.detail)
                response.headers.update(exc.headers)
            for name, value in PAGE_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return route


def html_router() -> APIRouter:
    """A router for dashboard routes (kept out of the API's OpenAPI document)."""
    return APIRouter(include_in_schema=False, route_class=HtmlRoute)


templates = Jinja2Templates(directory=HERE / "templates")


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    """The template ``name``; a page for a signed-in user gets the CSRF token of its forms."""
    signed_in: DashboardSession | None = context.get("me")
    if signed_in is not None:
        context["csrf"] = csrf_token(request.app.state.dashboard_secret, signed_in.nonce)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def error_page(request: Request, status: int, code: str, detail: str) -> Response:
    return templates.TemplateResponse(
        request, "error.html", {"status": status, "code": code, "detail": detail},
        status_code=status,
    )  # fmt: skip


@cache
def _static_version(name: str) -> str:
    return hashlib.sha256((HERE / "static" / name).read_bytes()).hexdigest()[:10]


def static_url(name: str) -> str:
    return f"/ui/static/{name}?v={_static_version(name)}"


def job_duration(job: JobOut) -> float | None:
    if job.started_at is None:
        return None
    end = job.finished_at or datetime.now(UTC)
    return max(0.0, (end - job.started_at).total_seconds())


def calibration_factor(job: JobOut) -> int:
    """How many times ``budget.calibration_steps`` each of the job's calibration runs takes."""
    optimizer = job.spec.optimizer
    momenta = (g.momentum for g in optimizer.param_groups)
    longer = heavy_ball(optimizer.name, optimizer.momentum, momenta)
    return MOMENTUM_CALIBRATION_FACTOR if longer else 1


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def human_ago(at: datetime) -> str:
    seconds = (datetime.now(UTC) - at).total_seconds()
    if seconds < 60:
        return "just now"
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if unit == 'day' and n > 1 else ''} ago"
    return "just now"


templates.env.globals.update(
    static_url=static_url, fmt=charts.fmt, statuses=STATUSES, human_duration=human_duration,
    human_ago=human_ago, job_duration=job_duration, calibration_factor=calibration_factor,
)  # fmt: skip
templates.env.filters["utc"] = lambda at: at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else "—"
