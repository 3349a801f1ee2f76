"""The dashboard's pages of jobs: the list (with live progress), one job with its
recommendation and charts, its downloads, cancelling it, and the static files."""

from __future__ import annotations

import math
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from lrprobe.client.error_catalogue import advice
from lrprobe.client.schemas import JobOut, Recommendation
from lrprobe.service import jobs, uploads
from lrprobe.service.dashboard import charts, queries
from lrprobe.service.dashboard.export import recommendation_csv, torch_snippet
from lrprobe.service.dashboard.rendering import HERE, STATUSES, html_router, render
from lrprobe.service.dashboard.session import DashboardSession
from lrprobe.service.dashboard.signin import Current, checked_form
from lrprobe.service.deps import Services, ServicesDep
from lrprobe.service.errors import ServiceError
from lrprobe.service.lifecycle import FINAL, JobStatus

router = html_router()

STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "theme.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PAGE_SIZE = 50


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
    return render(
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
        hint = advice(job.error.code)
        context["advice"] = hint if hint != job.error.detail else None
    return render(request, "job.html", me=me, **context)


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
    await checked_form(request, me)
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
