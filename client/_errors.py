"""The SDK's exceptions: one class per family of the error catalogue
(:data:`lrprobe.client.error_catalogue.CATALOGUE`), each carrying the problem body the service
sent; a failed job's code (:data:`lrprobe.client.schemas.JOB_ERROR_CODES`) comes as
:class:`JobFailed`."""

# ruff: noqa: N818 - the names are the families users catch (NotFound, Conflict, …)

from __future__ import annotations

import contextlib
import warnings

import httpx
from pydantic import ValidationError

from lrprobe.client.error_catalogue import CATALOGUE, FAMILIES, Family, family_for_status
from lrprobe.client.schemas import JobOut, Problem


class LrprobeError(Exception):
    """Base of every error the SDK raises about the service.

    ``code`` is the stable problem code (branch on it, not on the sentence), ``detail`` the
    sentence that says what went wrong and what to do (the problem's ``detail``), ``status``
    the HTTP status (``None`` when no response came back), ``problem`` the RFC 9457 body.
    """

    def __init__(
        self,
        detail: str,
        *,
        code: str,
        status: int | None = None,
        problem: Problem | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.status = status
        self.problem = problem

    @property
    def message(self) -> str:
        """Deprecated: the same sentence as :attr:`detail`, the name every lrprobe error uses."""
        warnings.warn(
            "LrprobeError.message is deprecated; use .detail", DeprecationWarning, stacklevel=2
        )
        return self.detail

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{self.detail} [{where}{self.code}]"


class ValidationFailed(LrprobeError):
    """The request or its content was refused as sent (400, 405, 408, 413, 415, 422): the
    detail says what to change; ``problem.errors`` lists field errors."""


class Unauthorized(LrprobeError):
    """No API key, an unknown or revoked one (401), or one without the rights (403)."""


class NotFound(LrprobeError):
    """No such model, dataset, job or key for this API key (404)."""


class Conflict(LrprobeError):
    """The resource is not in a state that allows the request (409)."""


class RateLimited(LrprobeError):
    """Too many requests, or open event streams, for this key (429); retry after
    ``retry_after`` seconds."""

    def __init__(
        self,
        detail: str,
        *,
        code: str = "rate_limited",
        status: int | None = 429,
        problem: Problem | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail, code=code, status=status, problem=problem)
        self.retry_after = retry_after


class ServerError(LrprobeError):
    """The service failed or is unavailable (5xx); retrying later may help."""


class ConnectionFailed(LrprobeError):
    """The service could not be reached (after the retries that were safe)."""


class JobFailed(LrprobeError):
    """The job ended failed or cancelled, so it has no recommendation; ``job`` is its state and
    ``code`` the worker's code (``cancelled`` for a cancelled job)."""

    def __init__(self, job: JobOut) -> None:
        if job.status == "cancelled":
            code, detail = "cancelled", "it was cancelled"
        else:
            code = job.error.code if job.error else "failed"
            detail = job.error.detail if job.error and job.error.detail else "it failed"
        super().__init__(f"Job {job.id} has no recommendation: {detail}", code=code)
        self.job = job


class WaitTimeout(LrprobeError, TimeoutError):
    """``wait(timeout=...)`` ran out before the job was final; the job goes on."""


FAMILY_CLASSES: dict[Family, type[LrprobeError]] = {
    "request": ValidationFailed,
    "checkpoint": ValidationFailed,
    "data": ValidationFailed,
    "auth": Unauthorized,
    "not_found": NotFound,
    "conflict": Conflict,
    "rate_limit": RateLimited,
    "server": ServerError,
    "probe": JobFailed,  # only ever a failed job's code
    "job": JobFailed,
    "connection": ConnectionFailed,
    "wait": WaitTimeout,
    # the CLI's own families: the SDK never raises them
    "usage": LrprobeError,
    "setup": LrprobeError,
}
"""Family of the error catalogue → the exception the SDK raises for it."""

assert set(FAMILY_CLASSES) == set(FAMILIES), "a family of the catalogue without an exception"

ERROR_CLASSES: dict[str, type[LrprobeError]] = {
    code: FAMILY_CLASSES[entry.family]
    for code, entry in CATALOGUE.items()
    if entry.status is not None
}
"""Problem code → exception class, for every code the service sends as a problem."""


def _class_for_status(status: int) -> type[LrprobeError]:
    return FAMILY_CLASSES[family_for_status(status)] if status >= 400 else LrprobeError


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def error_from_response(response: httpx.Response) -> LrprobeError:
    """The typed exception for an error response: by its problem ``code``, else by status (a
    proxy's HTML error page has no code; it gets ``http_<status>``)."""
    problem: Problem | None = None
    with contextlib.suppress(ValidationError):
        problem = Problem.model_validate_json(response.content)
    if problem is not None:
        cls = ERROR_CLASSES.get(problem.code) or _class_for_status(response.status_code)
        detail = problem.detail or problem.title
        code = problem.code
    else:
        cls = _class_for_status(response.status_code)
        detail = f"the service answered {response.status_code} {response.reason_phrase}".strip()
        code = f"http_{response.status_code}"
    status = response.status_code
    if cls is RateLimited:
        return RateLimited(
            detail, code=code, status=status, problem=problem, retry_after=_retry_after(response)
        )
    return cls(detail, code=code, status=status, problem=problem)
