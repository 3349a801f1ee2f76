"""Probe jobs: submit, list, read, cancel, recommendation and progress events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from lrprobe.client.schemas import (
    JobCreate,
    JobEventList,
    JobOut,
    JobPage,
    JobStatusName,
    Recommendation,
)
from lrprobe.service import jobs
from lrprobe.service.deps import CurrentKey, ServicesDep, SessionsDep
from lrprobe.service.keys import Principal
from lrprobe.service.lifecycle import JobStatus
from lrprobe.service.routes import problems

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

EVENT_POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "Idempotent replay"},
        **problems(401, 404, 409, 422, 429),
    },
)
def submit_job(
    body: JobCreate,
    response: Response,
    services: ServicesDep,
    key: CurrentKey,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=200,
            description="Resending the same body with the same key returns the same job.",
        ),
    ] = None,
) -> JobOut:
    """Queue a probe of one of this key's models on the referenced data (202). With an
    ``Idempotency-Key``, a repeated request returns the first job (200) and a different body
    under the same key is a 409."""
    submitted = jobs.submit_job(
        services.sessions, services.queue, services.settings, key, body, idempotency_key
    )
    if not submitted.created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{submitted.job.id}"
    return submitted.job


@router.get("", response_model=JobPage, responses=problems(401, 422))
def list_jobs(
    sessions: SessionsDep,
    key: CurrentKey,
    status: Annotated[JobStatusName | None, Query(description="Only jobs in this status.")] = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="Id prefix, or text in the label or data reference."),
    ] = None,
    run: Annotated[
        str | None, Query(max_length=200, description="Only the jobs of this training run.")
    ] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=jobs.MAX_PAGE)] = 50,
) -> JobPage:
    """This key's jobs, newest first, in pages."""
    wanted = None if status is None else JobStatus(status)
    return jobs.list_jobs(sessions, key, status=wanted, text=q, run=run, cursor=cursor, limit=limit)


@router.get("/{job_id}", response_model=JobOut, responses=problems(401, 404))
def get_job(job_id: str, sessions: SessionsDep, key: CurrentKey) -> JobOut:
    """One job: status, progress, error."""
    return jobs.get_job(sessions, key, job_id)


@router.get(
    "/{job_id}/recommendation", response_model=Recommendation, responses=problems(401, 404, 409)
)
def get_recommendation(job_id: str, sessions: SessionsDep, key: CurrentKey) -> Recommendation:
    """The per-group learning rates of a succeeded job (409 ``job_not_finished`` before)."""
    return jobs.get_recommendation(sessions, key, job_id)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=problems(401, 404, 409))
def cancel_job(job_id: str, sessions: SessionsDep, key: CurrentKey) -> JobOut:
    """Cancel a queued job at once, or ask a running one to stop at its next batch
    (``cancel_requested`` is then true until the worker acknowledges)."""
    return jobs.cancel_job(sessions, key, job_id)


@router.get(
    "/{job_id}/events",
    response_model=JobEventList,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Events (SSE or JSON)"},
        **problems(401, 404),
    },
)
async def job_events(
    job_id: str,
    request: Request,
    services: ServicesDep,
    key: CurrentKey,
    after: Annotated[int, Query(ge=0, description="Only events with a larger id.")] = 0,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Any:
    """Progress and status events. With ``Accept: text/event-stream``: server-sent events
    that resume after ``Last-Event-ID`` and end when the job is final. Otherwise (the polling
    fallback): a JSON list of the events after ``?after=``."""
    first = await run_in_threadpool(jobs.list_events, services.sessions, key, job_id, after)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return first
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after
    if start != after:
        first = await run_in_threadpool(jobs.list_events, services.sessions, key, job_id, start)
    return StreamingResponse(
        _stream(services, key, job_id, first, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    services: ServicesDep, key: Principal, job_id: str, page: JobEventList, cursor: int
) -> AsyncIterator[str]:
    idle = 0.0
    yield "retry: 2000\n\n"
    while True:
        for event in page.items:
            data = json.dumps({"job_id": event.job_id, "at": event.at.isoformat(), **event.data})
            yield f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"
            cursor = event.id
        if page.final:
            yield f"event: end\ndata: {json.dumps({'status': page.status})}\n\n"
            return
        if page.items:
            idle = 0.0
        else:
            await asyncio.sleep(EVENT_POLL_SECONDS)
            idle += EVENT_POLL_SECONDS
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                yield ": keep-alive\n\n"
        page = await run_in_threadpool(jobs.list_events, services.sessions, key, job_id, cursor)
