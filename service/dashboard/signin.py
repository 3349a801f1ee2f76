"""Signing in to the dashboard with an API key, signing out, and what every signed-in page
depends on: the session cookie (``session``), the key's rate limit and the forms' CSRF token.

Sign-in attempts go through the API's failed-authentication throttle, and each signed-in
request through the key's rate limit, the same as an API request of that key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from lrprobe.service import keys
from lrprobe.service.auth_throttle import client_address
from lrprobe.service.dashboard.rendering import (
    CsrfError,
    SignInRequiredError,
    html_router,
    render,
)
from lrprobe.service.dashboard.session import (
    PRESESSION_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    DashboardSession,
    csrf_ok,
    csrf_token,
    end_session,
    live_key,
    load_secret,
    new_nonce,
    read_cookie,
    start_session,
)
from lrprobe.service.deps import Services, ServicesDep, check_rate, throttled

router = html_router()


def dashboard_secret(request: Request, services: Services) -> bytes:
    secret: bytes | None = getattr(request.app.state, "dashboard_secret", None)
    if secret is None:
        secret = load_secret(services.settings)
        request.app.state.dashboard_secret = secret
    return secret


async def _current(request: Request, services: ServicesDep) -> DashboardSession:
    parsed = read_cookie(dashboard_secret(request, services), request.cookies.get(SESSION_COOKIE))
    if parsed is None:
        raise SignInRequiredError
    signed_in = await run_in_threadpool(live_key, services.sessions, *parsed)
    if signed_in is None:
        raise SignInRequiredError
    await check_rate(services, signed_in.principal)
    return signed_in


Current = Annotated[DashboardSession, Depends(_current)]


async def checked_form(request: Request, me: DashboardSession) -> dict[str, str]:
    """The form's text fields, once its CSRF token is this session's."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not csrf_ok(request.app.state.dashboard_secret, me.nonce, fields.get("csrf")):
        raise CsrfError
    return fields


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/jobs"


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=307)


@router.get("/ui")
@router.get("/ui/")
def dashboard_home() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=307)


def _sign_in_page(
    request: Request, services: Services, next_url: str, error: str | None = None,
    status: int = 200,
) -> Response:  # fmt: skip
    nonce = new_nonce()
    response = render(
        request, "sign_in.html", status, next=_safe_next(next_url), error=error,
        signin_token=csrf_token(dashboard_secret(request, services), "signin|" + nonce),
    )  # fmt: skip
    response.set_cookie(
        PRESESSION_COOKIE, nonce, max_age=3600, path="/ui/sign-in", httponly=True,
        samesite="lax", secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


@router.get("/ui/sign-in")
def sign_in_form(request: Request, services: ServicesDep, next: str = "/ui/jobs") -> Response:
    return _sign_in_page(request, services, next)


@router.post("/ui/sign-in")
async def sign_in(request: Request, services: ServicesDep) -> Response:
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    secret = dashboard_secret(request, services)
    nonce = request.cookies.get(PRESESSION_COOKIE, "")
    next_url = _safe_next(fields.get("next"))
    if not nonce or not csrf_ok(secret, "signin|" + nonce, fields.get("csrf")):
        return _sign_in_page(
            request, services, next_url, "The sign-in form expired; try again.", 403
        )
    address = client_address(request.client)
    await throttled(services, address)
    principal = await run_in_threadpool(
        keys.authenticate, services.sessions, fields.get("api_key", "").strip()
    )
    if principal is None:
        await services.throttle.failed(address)
        return _sign_in_page(
            request, services, next_url,
            "That API key is unknown or revoked. Paste the whole key (it starts with lrp_); "
            "an admin can create one with `lrprobe keys create`.", 401,
        )  # fmt: skip
    cookie = await run_in_threadpool(start_session, services.sessions, secret, principal.id)
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, cookie, max_age=SESSION_SECONDS, path="/ui",
        httponly=True, samesite="lax", secure=request.url.scheme == "https",
    )  # fmt: skip
    response.delete_cookie(PRESESSION_COOKIE, path="/ui/sign-in")
    return response


@router.post("/ui/sign-out")
async def sign_out(request: Request, services: ServicesDep, me: Current) -> Response:
    await checked_form(request, me)
    await run_in_threadpool(end_session, services.sessions, me.nonce)
    response = RedirectResponse("/ui/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response
