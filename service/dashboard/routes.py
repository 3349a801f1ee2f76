"""The dashboard's pages: server-rendered HTML over the same use cases as the API, signed in
with an API key (see ``session``). Errors raised by use cases become HTML pages with the
problem's status, code and sentence."""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from lrprobe.client.schemas import JobCreate, JobOut, Recommendation
from lrprobe.service import jobs, keys, uploads
from lrprobe.service.auth_throttle import client_address
from lrprobe.service.dashboard import charts, queries
from lrprobe.service.dashboard.export import recommendation_csv, torch_snippet
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
from lrprobe.service.data_refs import BUILTIN_DATASETS
from lrprobe.service.deps import Services, ServicesDep, check_rate, throttled
from lrprobe.service.errors import PayloadTooLargeError, ServiceError
from lrprobe.service.lifecycle import FINAL, JobStatus
from lrprobe.service.upload_stream import UploadPace, receive_upload

HERE = Path(__file__).parent
STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "theme.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
STATUSES = [s.value for s in JobStatus]
PAGE_SIZE = 50
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
DATA_CODES = {
    "invalid_data_ref", "unsupported_data_scheme", "data_ref_refused", "host_not_allowed",
    "unknown_builtin_dataset", "dataset_not_found",
}  # fmt: skip
ADVICE = {
    "incompatible_model_input": "The model's input layer does not match the data's features: "
    "check the architecture config against the dataset.",
    "time_limit_exceeded": "Give the probe fewer batches, a smaller batch size, or a larger "
    "time limit in the budget.",
    "out_of_memory": "Use a smaller batch size, or run on a device with more memory.",
    "worker_lost": "The worker died repeatedly, usually from memory: try a smaller batch size.",
    "non_finite_loss": "The loss was NaN or infinite at the checkpoint: check the data scaling "
    "and the loss function.",
}


class SignInRequiredError(Exception):
    pass


class CsrfError(Exception):
    pass


class _HtmlRoute(APIRoute):
    """Turns the dashboard's errors into pages (the app's handlers answer problem+json)."""

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
                response = _error_page(
                    request, 403, "csrf_failed",
                    "The form expired or did not come from this dashboard; reload the page and "
                    "try again.",
                )  # fmt: skip
            except ServiceError as exc:
                response = _error_page(request, exc.status, exc.code, exc.detail)
                response.headers.update(exc.headers)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return route


router = APIRouter(include_in_schema=False, route_class=_HtmlRoute)
templates = Jinja2Templates(directory=HERE / "templates")


@cache
def _static_version(name: str) -> str:
    return hashlib.sha256((HERE / "static" / name).read_bytes()).hexdigest()[:10]


def static_url(name: str) -> str:
    return f"/ui/static/{name}?v={_static_version(name)}"


templates.env.globals.update(static_url=static_url, fmt=charts.fmt, statuses=STATUSES)


def _secret(request: Request, services: Services) -> bytes:
    secret: bytes | None = getattr(request.app.state, "dashboard_secret", None)
    if secret is None:
        secret = load_secret(services.settings)
        request.app.state.dashboard_secret = secret
    return secret


async def _current(request: Request, services: ServicesDep) -> DashboardSession:
    parsed = read_cookie(_secret(request, services), request.cookies.get(SESSION_COOKIE))
    if parsed is None:
        raise SignInRequiredError
    signed_in = await run_in_threadpool(live_key, services.sessions, *parsed)
    if signed_in is None:
        raise SignInRequiredError
    await check_rate(services, signed_in.principal)
    return signed_in


Current = Annotated[DashboardSession, Depends(_current)]


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    signed_in: DashboardSession | None = context.get("me")
    if signed_in is not None:
        context["csrf"] = csrf_token(request.app.state.dashboard_secret, signed_in.nonce)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _error_page(request: Request, status: int, code: str, detail: str) -> Response:
    return templates.TemplateResponse(
        request, "error.html", {"status": status, "code": code, "detail": detail},
        status_code=status,
    )  # fmt: skip


async def _checked_form(request: Request, me: DashboardSession) -> dict[str, str]:
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not csrf_ok(request.app.state.dashboard_secret, me.nonce, fields.get("csrf")):
        raise CsrfError
    return fields


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/jobs"


# --- sign in / out ---------------------------------------------------------------------------


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
    response = _render(
        request, "sign_in.html", status, next=_safe_next(next_url), error=error,
        signin_token=csrf_token(_secret(request, services), "signin|" + nonce),
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
    secret = _secret(request, services)
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
    await _checked_form(request, me)
    await run_in_threadpool(end_session, services.sessions, me.nonce)
    response = RedirectResponse("/ui/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


# --- jobs ------------------------------------------------------------------------------------


def _duration(job: JobOut) -> float | None:
    if job.started_at is None:
        return None
    end = job.finished_at or datetime.now(UTC)
    return max(0.0, (end - job.started_at).total_seconds())


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
    human_duration=human_duration, human_ago=human_ago, job_duration=_duration
)
templates.env.filters["utc"] = lambda at: at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else "—"


@router.get("/ui/jobs")
def jobs_page(
    request: Request,
    services: ServicesDep,
    me: Current,
    status: Annotated[str | None, Query()] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query()] = None,
) -> Response:
    wanted = JobStatus(status) if status in STATUSES else None
    page = jobs.list_jobs(
        services.sessions, me.principal, status=wanted, text=q, cursor=cursor, limit=PAGE_SIZE
    )
    models = queries.models_by_id(services.sessions, me.principal, {j.model_id for j in page.items})
    params = {k: v for k, v in (("status", wanted), ("q", (q or "").strip())) if v}
    next_url = (
        f"/ui/jobs?{urlencode(params | {'cursor': page.next_cursor})}" if page.next_cursor else None
    )
    return _render(
        request, "jobs.html", me=me, page=page, models=models, status=wanted, q=(q or "").strip(),
        next_url=next_url, first_url=f"/ui/jobs?{urlencode(params)}" if cursor else None,
        filter_url=lambda s: "/ui/jobs?" + urlencode(
            {k: v for k, v in (("status", s), ("q", (q or "").strip())) if v}
        ),
        final=[s.value for s in FINAL],
    )  # fmt: skip


@router.get("/ui/jobs/progress")
def jobs_progress(services: ServicesDep, me: Current, ids: str = "") -> JSONResponse:
    rows = queries.progress_of(services.sessions, me.principal, [i for i in ids.split(",") if i])
    return JSONResponse(
        {
            r.id: {
                "status": r.status, "done": r.done, "total": r.total, "phase": r.phase,
                "cancel_requested": r.cancel_requested, "final": r.status in FINAL,
            }
            for r in rows
        }
    )  # fmt: skip


def _new_job_page(
    request: Request, services: Services, me: DashboardSession, status: int = 200, **context: Any
) -> Response:
    context.setdefault("values", {})
    context.setdefault("errors", {})
    return _render(
        request, "new_job.html", status, me=me,
        models=queries.recent_models(services.sessions, me.principal),
        datasets=queries.recent_datasets(services.sessions, me.principal),
        builtins=BUILTIN_DATASETS, idempotency_key=secrets.token_urlsafe(16), **context,
    )  # fmt: skip


@router.get("/ui/jobs/new")
def new_job_form(
    request: Request, services: ServicesDep, me: Current, model: str | None = None,
    uploaded: str | None = None,
) -> Response:  # fmt: skip
    values = {"model_id": model} if model else {}
    notice = None
    if uploaded == "model" and model:
        notice = "Checkpoint uploaded; it is selected below."
    elif uploaded and uploaded.startswith("upload://"):
        values["data"] = uploaded
        notice = f"Dataset uploaded; it is referenced as {uploaded}."
    return _new_job_page(request, services, me, values=values, notice=notice)


def _spec_from_form(fields: dict[str, str]) -> dict[str, Any]:
    def given(name: str) -> str | None:
        value = fields.get(name, "").strip()
        return value or None

    optimizer: dict[str, Any] = {"name": given("optimizer.name") or "sgd"}
    if optimizer["name"] == "momentum" and given("optimizer.momentum"):
        optimizer["momentum"] = _number(given("optimizer.momentum"))
    if optimizer["name"] in ("adam", "adamw") and given("optimizer.betas"):
        optimizer["betas"] = [
            _number(b.strip()) for b in (given("optimizer.betas") or "").split(",")
        ]
    if given("optimizer.weight_decay"):
        optimizer["weight_decay"] = _number(given("optimizer.weight_decay"))
    rule: Any = given("partition.rule") or "layer"
    if rule == "regex":
        rule = {}
        for line in (given("partition.regex") or "").splitlines():
            if "=>" in line:
                pattern, _, name = line.partition("=>")
                rule[pattern.strip()] = name.strip()
    budget = {
        name: _number(given(f"budget.{name}"))
        for name in ("batches", "batch_size", "heldout_batches", "time_limit_s")
        if given(f"budget.{name}")
    }
    spec: dict[str, Any] = {
        "model_id": given("model_id") or "",
        "data": given("data") or "",
        "loss": given("loss") or "cross_entropy",
        "optimizer": optimizer,
        "partition": {"rule": rule},
        "budget": budget,
        "device": given("device") or "auto",
    }
    for name in ("seed", "block_size"):
        if given(name) is not None:
            spec[name] = _number(given(name))
    if given("label") is not None:
        spec["label"] = given("label")
    return spec


def _number(text: str | None) -> Any:
    """A form's number as JSON would carry it: the request schema takes strict ints and
    floats, and a form sends text. Anything else stays text and fails validation there."""
    if text is None:
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return text


def _field_errors(errors: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p != "body" and not str(p).isdigit()]
        name = ".".join(loc[:2]) or "form"
        if name == "partition.rule":
            name = "partition.regex" if "regular expression" in str(error.get("msg")) else name
        out.setdefault(name, str(error.get("msg", "invalid")).removeprefix("Value error, "))
    return out


@router.post("/ui/jobs")
async def create_job(request: Request, services: ServicesDep, me: Current) -> Response:
    fields = await _checked_form(request, me)
    spec = _spec_from_form(fields)
    try:
        body = JobCreate.model_validate(spec)
    except ValidationError as exc:
        errors = _field_errors(
            [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False)]
        )
        return _new_job_page(
            request, services, me, 422, values=fields, errors=errors,
            problem={"code": "validation_error",
                     "detail": "The job was not submitted: fix the fields marked below."},
        )  # fmt: skip
    try:
        submitted = await run_in_threadpool(
            jobs.submit_job, services.sessions, services.queue, services.settings, me.principal,
            body, fields.get("idempotency_key") or None,
        )  # fmt: skip
    except ServiceError as exc:
        errors = _field_errors(exc.errors)
        if exc.code in DATA_CODES:
            errors.setdefault("data", exc.detail)
        elif exc.code == "model_not_found":
            errors.setdefault("model_id", exc.detail)
        return _new_job_page(
            request, services, me, exc.status, values=fields, errors=errors,
            problem={"code": exc.code, "detail": exc.detail},
        )  # fmt: skip
    return RedirectResponse(f"/ui/jobs/{quote(submitted.job.id)}", status_code=303)


async def _upload(
    request: Request, services: Services, me: DashboardSession, kind: str
) -> Response:
    cap = services.settings.max_upload_bytes
    what = "checkpoint" if kind == "model" else "dataset"
    too_large = PayloadTooLargeError(
        f"The {what} is over the limit of {cap} bytes; send a smaller file or ask the operator "
        "to raise LRPROBE_MAX_UPLOAD_BYTES.",
        code=f"{what}_too_large",
    )
    try:
        async with receive_upload(
            request, tmp_dir=services.upload_dir, max_bytes=cap, too_large=lambda: too_large,
            pace=UploadPace.from_settings(services.settings),
        ) as form:  # fmt: skip
            if not csrf_ok(request.app.state.dashboard_secret, me.nonce, form.fields.get("csrf")):
                raise CsrfError
            if kind == "model":
                model = await run_in_threadpool(
                    lambda: uploads.register_model(
                        services.sessions, services.store, me.principal, form.file,
                        arch=form.fields.get("arch"), arch_config=form.fields.get("arch_config"),
                        allow_pt2=services.settings.allow_pt2,
                    )
                )  # fmt: skip
                target = f"/ui/jobs/new?{urlencode({'model': model.id, 'uploaded': 'model'})}"
            else:
                dataset = await run_in_threadpool(
                    uploads.register_dataset, services.sessions, services.store, me.principal,
                    form.file,
                )  # fmt: skip
                target = f"/ui/jobs/new?{urlencode({'uploaded': dataset.uri})}"
    except ServiceError as exc:
        return _new_job_page(
            request, services, me, exc.status,
            upload_problem={"kind": kind, "code": exc.code, "detail": exc.detail},
        )  # fmt: skip
    return RedirectResponse(target, status_code=303)


@router.post("/ui/models")
async def upload_model(request: Request, services: ServicesDep, me: Current) -> Response:
    return await _upload(request, services, me, "model")


@router.post("/ui/datasets")
async def upload_dataset(request: Request, services: ServicesDep, me: Current) -> Response:
    return await _upload(request, services, me, "dataset")


def _recommendation(services: Services, me: DashboardSession, job: JobOut) -> Recommendation:
    return jobs.get_recommendation(services.sessions, me.principal, job.id)


@router.get("/ui/jobs/{job_id}")
def job_page(request: Request, services: ServicesDep, me: Current, job_id: str) -> Response:
    job = jobs.get_job(services.sessions, me.principal, job_id)
    try:
        model = uploads.get_model(services.sessions, me.principal, job.model_id)
    except ServiceError:
        model = None
    context: dict[str, Any] = {"job": job, "model": model, "final": job.status in FINAL}
    if job.status == JobStatus.SUCCEEDED:
        rec = _recommendation(services, me, job)
        names = [g.name for g in rec.groups]
        flagged = [g for g in rec.groups if g.flags]
        lrs = [g.lr for g in rec.groups if g.lr is not None and math.isfinite(g.lr) and g.lr > 0]
        context |= {
            "rec": rec,
            "flagged": flagged,
            "lr_range": (min(lrs), max(lrs)) if lrs else None,
            "lr_chart": charts.lr_chart(rec.groups, rec.single_group_lr),
            "coupling_chart": charts.coupling_heatmap(names, rec.coupling),
            "coupling_too_big": len(rec.coupling) > charts.MAX_HEATMAP,
            "eta_chart": charts.eta_spread_chart(rec.groups),
            "calibrated": rec.method == "trajectory",
            "scale_chart": (
                charts.calibration_chart(rec.scale_checks, rec.scale)
                if rec.method == "trajectory"
                else charts.scale_check_chart(rec.scale_checks)
            ),
            "loss_chart": charts.loss_line(rec.trajectory_losses),
            "snippet": torch_snippet(job, rec),
        }
    if job.run is not None:
        history = queries.run_history(services.sessions, me.principal, job.run)
        context["history_chart"] = charts.run_history_chart(history)
        context["history_count"] = len(history)
    if job.error is not None:
        context["advice"] = ADVICE.get(job.error.code)
    return _render(request, "job.html", me=me, **context)


@router.get("/ui/jobs/{job_id}/recommendation.json")
def job_json(services: ServicesDep, me: Current, job_id: str) -> Response:
    job = jobs.get_job(services.sessions, me.principal, job_id)
    rec = _recommendation(services, me, job)
    return Response(
        rec.model_dump_json(indent=2),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="lrprobe-{job.id}.json"'},
    )


@router.get("/ui/jobs/{job_id}/recommendation.csv")
def job_csv(services: ServicesDep, me: Current, job_id: str) -> Response:
    job = jobs.get_job(services.sessions, me.principal, job_id)
    rec = _recommendation(services, me, job)
    return PlainTextResponse(
        recommendation_csv(rec),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="lrprobe-{job.id}.csv"'},
    )


@router.post("/ui/jobs/{job_id}/cancel")
async def cancel(request: Request, services: ServicesDep, me: Current, job_id: str) -> Response:
    await _checked_form(request, me)
    await run_in_threadpool(jobs.cancel_job, services.sessions, me.principal, job_id)
    return RedirectResponse(f"/ui/jobs/{quote(job_id)}", status_code=303)


@router.get("/ui/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        return PlainTextResponse("not found", status_code=404)
    return Response(
        (HERE / "static" / name).read_bytes(),
        media_type=STATIC[name],
        headers={"Cache-Control": "public, max-age=86400"},
    )
