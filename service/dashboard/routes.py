"""The dashboard's routes, one module per concern: signing in (``signin``), the new-job form
(``job_form``), uploads from it (``uploads``) and the job pages (``pages``). Errors raised by
use cases become HTML pages with the problem's status, code and sentence (``rendering``)."""

from __future__ import annotations

from fastapi import APIRouter

from lrprobe.service.dashboard import job_form, pages, signin, uploads

router = APIRouter(include_in_schema=False)
# The form's fixed path /ui/jobs/new before the pages' /ui/jobs/{job_id}.
for part in (signin, job_form, uploads, pages):
    router.include_router(part.router)
