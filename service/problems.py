"""THE renderer of errors as RFC 9457 ``application/problem+json``: the app's exception
handlers and the request-limits middleware (which answers before any route runs) both use it,
so every problem has the same body and headers."""

from __future__ import annotations

from starlette.responses import JSONResponse

from lrprobe.service.errors import PROBLEM_MEDIA_TYPE, ServiceError, problem_body


def problem_response(error: ServiceError, instance: str | None) -> JSONResponse:
    """``error`` as a problem+json response; ``instance`` is the request's path."""
    return JSONResponse(
        problem_body(error, instance),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=error.headers or None,
    )
