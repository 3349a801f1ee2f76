"""The SDK's exceptions: one class per family of problem ``code`` (see
:data:`lrprobe.client.schemas.PROBLEM_CODES`), each carrying the problem body the service sent;
a failed job's code (:data:`lrprobe.client.schemas.JOB_ERROR_CODES`) comes as :class:`JobFailed`."""

# ruff: noqa: N818 - the names are the families users catch (NotFound, Conflict, …)

from __future__ import annotations

import contextlib

import httpx
from pydantic import ValidationError

from lrprobe.client.schemas import PROBLEM_CODES, JobOut, Problem


class LrprobeError(Exception):
    """Base of every error the SDK raises about the service.

    ``code`` is the stable problem code (branch on it, not on the message), ``status`` the HTTP
    status (``None`` when no response came back), ``problem`` the RFC 9457 body.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int | None = None,
        problem: Problem | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.problem = problem

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{self.message} [{where}{self.code}]"


class ValidationFailed(LrprobeError):
    """The request or its content was refused as sent (400, 405, 413, 415, 422): the message
    says what to change; ``problem.errors`` lists field errors."""


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
        message: str,
        *,
        code: str = "rate_limited",
        status: int | None = 429,
        problem: Problem | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, problem=problem)
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


_FAMILIES: dict[type[LrprobeError], tuple[str, ...]] = {
    ValidationFailed: (
        "bad_request",
        "validation_error",
        "invalid_cursor",
        "unsupported_media_type",
        "request_too_large",
        "request_timeout",
        "method_not_allowed",
        "checkpoint_too_large",
        "dataset_too_large",
        "empty_upload",
        "unsupported_checkpoint",
        "unsafe_archive",
        "pickle_refused",
        "torchscript_refused",
        "pt2_disabled",
        "hf_invalid_model",
        "hf_remote_code_refused",
        "arch_not_applicable",
        "arch_required",
        "invalid_arch_config",
        "unsupported_data_format",
        "invalid_data_ref",
        "unsupported_data_scheme",
        "data_ref_refused",
        "host_not_allowed",
        "unknown_builtin_dataset",
    ),
    Unauthorized: ("unauthorized", "admin_required", "csrf_failed"),
    NotFound: (
        "not_found",
        "model_not_found",
        "dataset_not_found",
        "job_not_found",
        "key_not_found",
    ),
    Conflict: ("conflict", "idempotency_conflict", "job_not_finished", "job_finished"),
    RateLimited: ("rate_limited", "too_many_streams"),
    ServerError: ("internal_error", "service_unavailable", "broker_unavailable"),
}

ERROR_CLASSES: dict[str, type[LrprobeError]] = {
    code: cls for cls, codes in _FAMILIES.items() for code in codes
}
"""Problem code → exception class; every code of :data:`PROBLEM_CODES` is here."""

_missing = set(PROBLEM_CODES) - set(ERROR_CLASSES)
assert not _missing, f"problem codes without an exception class: {sorted(_missing)}"


def _class_for_status(status: int) -> type[LrprobeError]:
    if status in (401, 403):
        return Unauthorized
    if status == 404:
        return NotFound
    if status == 409:
        return Conflict
    if status == 429:
        return RateLimited
    if status >= 500:
        return ServerError
    if status >= 400:
        return ValidationFailed
    return LrprobeError


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
        message = problem.detail or problem.title
        code = problem.code
    else:
        cls = _class_for_status(response.status_code)
        message = f"the service answered {response.status_code} {response.reason_phrase}".strip()
        code = f"http_{response.status_code}"
    status = response.status_code
    if cls is RateLimited:
        return RateLimited(
            message, code=code, status=status, problem=problem, retry_after=_retry_after(response)
        )
    return cls(message, code=code, status=status, problem=problem)
