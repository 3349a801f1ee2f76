"""Probe jobs: submit, list, read, cancel, recommendation and progress events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

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
from lrprobe.service.errors import TooManyStreamsError, UnprocessableError
from lrprobe.service.keys import Principal
from lrprobe.service.lifecycle import JobStatus
from lrprobe.service.routes import problems
from lrprobe.service.stream_limit import RETRY_AFTER_SECONDS, StreamLimit, StreamSlot

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_EVENT_ID = 2**63 - 1  # event ids are 64-bit; a larger cursor cannot name one
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
) -> Response:
    """Queue a probe of one of this key's models on the referenced data (202). With an
    ``Idempotency-Key``, a repeated request returns the first job (200) and a different body
    under the same key is a 409."""
    submitted = jobs.submit_job(
        services.sessions, services.queue, services.settings, key, body, idempotency_key
    )
    headers = {"Location": f"/v1/jobs/{submitted.id}"}
    if not submitted.created:
        headers["Idempotent-Replayed"] = "true"
    # JobOut's JSON as the use case made it (FastAPI would validate a returned JobOut again)
    return Response(
        submitted.json,
        status_code=202 if submitted.created else 200,
        media_type="application/json",
        headers=headers,
    )


@router.get("", response_model=JobPage, responses=problems(401, 422))
async def list_jobs(
    services: ServicesDep,
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
) -> Response:
    """This key's jobs, newest first, in pages."""
    wanted = None if status is None else JobStatus(status)
    # Serialised by the use case (rows straight to JSON): a JobPage returned here would be
    # validated again by FastAPI, which took longer than the query.
    return _json(
        await services.job_reads.page(
            key, status=wanted, text=q, run=run, cursor=cursor, limit=limit
        )
    )


@router.get("/{job_id}", response_model=JobOut, responses=problems(401, 404))
async def get_job(job_id: str, services: ServicesDep, key: CurrentKey) -> Response:
    """One job: status, progress, error."""
    return _json(await services.job_reads.job(key, job_id))


def _json(content: bytes) -> Response:
    return Response(content, media_type="application/json")


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
        **problems(401, 404, 422, 429),
    },
)
async def job_events(
    job_id: str,
    request: Request,
    services: ServicesDep,
    key: CurrentKey,
    after: Annotated[
        int, Query(ge=0, le=MAX_EVENT_ID, description="Only events with a larger id.")
    ] = 0,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)] = None,
) -> Any:
    """Progress and status events. With ``Accept: text/event-stream``: server-sent events
    that resume after ``Last-Event-ID`` and end when the job is final; a key may hold
    ``LRPROBE_MAX_STREAMS_PER_KEY`` streams open at once (429 ``too_many_streams`` beyond).
    Otherwise (the polling fallback): a JSON list of the events after ``?after=``."""
    first = await run_in_threadpool(jobs.list_events, services.reads, key, job_id, after)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return first
    start = _resume_from(last_event_id, after)
    if start != after:
        first = await run_in_threadpool(jobs.list_events, services.reads, key, job_id, start)
    slot = await services.streams.acquire(key.id)
    if slot is None:
        raise TooManyStreamsError(
            f"This key already holds {services.streams.max_per_key} open event streams, its "
            f"limit; close one, or poll this route without Accept: text/event-stream. Retry in "
            f"{RETRY_AFTER_SECONDS} s.",
            retry_after=RETRY_AFTER_SECONDS,
        )
    return _SlotStream(
        _stream(services, key, job_id, first, start),
        services.streams,
        slot,
        media_type="text/event-stream",
        # no-store as on every API answer (events carry results); no buffering in nginx
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


class _SlotStream(StreamingResponse):
    """A stream that gives its slot back however it ends: the job final, the client gone, or
    the server cancelling it at shutdown."""

    def __init__(
        self, content: AsyncIterator[str], streams: StreamLimit, slot: StreamSlot, **kwargs: Any
    ) -> None:
        super().__init__(self._released_at_end(content), **kwargs)
        self.streams = streams
        self.slot = slot

    async def _released_at_end(self, content: AsyncIterator[str]) -> AsyncIterator[str]:
        async for chunk in content:
            yield chunk
        # Before the response completes: its client may open the next stream at once.
        await self.streams.release(self.slot)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: a cancelled stream must still reach Redis to give its slot back.
            with anyio.CancelScope(shield=True):
                await self.streams.release(self.slot)


def _resume_from(last_event_id: str | None, after: int) -> int:
    """The event id to resume after: ``Last-Event-ID`` when it is one of ours, else ``after``."""
    if not last_event_id:
        return after
    if not last_event_id.isascii() or not last_event_id.isdigit():
        return after  # not an id this service sent: start from ?after=
    if len(last_event_id) > 19 or int(last_event_id) > MAX_EVENT_ID:
        raise UnprocessableError(
            f"Last-Event-ID is over {MAX_EVENT_ID}, so it is no event of this job; reconnect "
            "without it."
        )
    return int(last_event_id)


async def _stream(
    services: ServicesDep, key: Principal, job_id: str, page: JobEventList, cursor: int
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    # Watch before the next read, and clear the flag before each read: a change committed
    # after a read sets the flag again, so none is missed. Between changes the stream waits
    # on the flag and costs no query (lrprobe.service.events).
    with services.events.watch(job_id) as changed:
        changed.set()  # read once more now that it watches: the first page was read before
        while True:
            for event in page.items:
                data = json.dumps(
                    {"job_id": event.job_id, "at": event.at.isoformat(), **event.data}
                )
                yield f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"
                cursor = event.id
            if page.final:
                yield f"event: end\ndata: {json.dumps({'status': page.status})}\n\n"
                return
            if not page.items or len(page.items) < jobs.MAX_EVENTS:
                while True:
                    try:
                        await asyncio.wait_for(changed.wait(), KEEPALIVE_SECONDS)
                        break
                    except TimeoutError:
                        yield ": keep-alive\n\n"
            changed.clear()
            page = await run_in_threadpool(jobs.list_events, services.reads, key, job_id, cursor)
