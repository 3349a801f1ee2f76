"""The service's errors: one class per stable code, rendered by one handler as RFC 9457
``application/problem+json`` (``lrprobe.service.problems``). Use cases raise these; routes never
build responses for errors themselves.

A class names only its code: the HTTP status and the title come from the error catalogue
(``lrprobe.client.error_catalogue``), and so does the detail when a raise gives none.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lrprobe.client.error_catalogue import CATALOGUE, problem_status

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ServiceError(Exception):
    """Base of every error a client may see. ``code`` is stable (the SDK branches on it) and
    fixes ``status`` and ``title``; ``detail`` is a sentence that says what went wrong and what
    to do.

    ``code=`` gives an instance another code (the intake's refusals share a few classes);
    ``status=`` overrides the catalogue's status where one code has two (a valid safetensors
    file without tensors is 422, not the 415 of a file that is no checkpoint at all).
    """

    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance intake code
        entry = CATALOGUE[self.code]
        self.detail: str = detail or entry.advice
        self.status: int = status or problem_status(self.code)
        self.title: str = entry.title
        super().__init__(self.detail)
        self.errors = errors or []
        self.headers = headers or {}


class BadRequestError(ServiceError):
    code = "bad_request"


class UnauthorizedError(ServiceError):
    code = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="lrprobe"'})


class AdminRequiredError(ServiceError):
    code = "admin_required"


class NotFoundError(ServiceError):
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class DatasetNotFoundError(NotFoundError):
    code = "dataset_not_found"


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class KeyNotFoundError(NotFoundError):
    code = "key_not_found"


class MethodNotAllowedError(ServiceError):
    code = "method_not_allowed"


class ConflictError(ServiceError):
    code = "conflict"


class IdempotencyConflictError(ConflictError):
    code = "idempotency_conflict"


class JobNotFinishedError(ConflictError):
    code = "job_not_finished"


class JobFinishedError(ConflictError):
    code = "job_finished"


class PayloadTooLargeError(ServiceError):
    code = "checkpoint_too_large"


class RequestTimeoutError(ServiceError):
    code = "request_timeout"


class RequestTooLargeError(ServiceError):
    code = "request_too_large"


class UnsupportedMediaTypeError(ServiceError):
    code = "unsupported_media_type"


class UnprocessableError(ServiceError):
    """The request is well formed but its content cannot be used (intake-style codes)."""

    code = "validation_error"


class InvalidCursorError(UnprocessableError):
    code = "invalid_cursor"


class RateLimitedError(ServiceError):
    code = "rate_limited"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class TooManyStreamsError(RateLimitedError):
    code = "too_many_streams"


class ServiceUnavailableError(ServiceError):
    code = "service_unavailable"


def problem_body(error: ServiceError, instance: str | None) -> dict[str, Any]:
    return {
        "type": f"urn:lrprobe:problem:{error.code}",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "instance": instance,
        "code": error.code,
        "errors": error.errors,
    }
