"""Uploading a checkpoint or a dataset from the new-job page: the same streaming receiver,
size cap and pace as ``POST /v1/models`` and ``POST /v1/datasets``, and the same use cases; a
refusal is shown on the new-job page."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlencode

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from lrprobe.service import uploads
from lrprobe.service.dashboard.job_form import new_job_page
from lrprobe.service.dashboard.rendering import CsrfError, html_router
from lrprobe.service.dashboard.session import DashboardSession, csrf_ok
from lrprobe.service.dashboard.signin import Current
from lrprobe.service.deps import Services, ServicesDep
from lrprobe.service.errors import ServiceError
from lrprobe.service.upload_stream import receive_artifact

router = html_router()


@router.post("/ui/models")
async def upload_model(request: Request, services: ServicesDep, me: Current) -> Response:
    return await _upload(request, services, me, "checkpoint")


@router.post("/ui/datasets")
async def upload_dataset(request: Request, services: ServicesDep, me: Current) -> Response:
    return await _upload(request, services, me, "dataset")


async def _upload(
    request: Request,
    services: Services,
    me: DashboardSession,
    what: Literal["checkpoint", "dataset"],
) -> Response:
    # The CSRF token is a field of the multipart form, so it is checked once the form is read.
    try:
        async with receive_artifact(request, what, services.settings, services.upload_dir) as form:
            if not csrf_ok(request.app.state.dashboard_secret, me.nonce, form.fields.get("csrf")):
                raise CsrfError
            if what == "checkpoint":
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
        kind = "model" if what == "checkpoint" else "dataset"  # the page's name for the form
        return new_job_page(
            request, services, me, exc.status,
            upload_problem={"kind": kind, "code": exc.code, "detail": exc.detail},
        )  # fmt: skip
    return RedirectResponse(target, status_code=303)
