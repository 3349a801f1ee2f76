"""The service's errors: one class per stable code, rendered by one handler as RFC 9457
``application/problem+json`` (see ``lrprobe.service.app``). Use cases raise these; routes never
build responses for errors themselves."""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ServiceError(Exception):
    """Base of every error a client may see. ``code`` is stable (the SDK branches on it);
    ``detail`` is a sentence that says what went wrong and what to do."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance intake code
        self.errors = errors or []
        self.headers = headers or {}


class BadRequestError(ServiceError):
    status = 400
    code = "bad_request"
    title = "Bad request"


class UnauthorizedError(ServiceError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="lrprobe"'})


class AdminRequiredError(ServiceError):
    status = 403
    code = "admin_required"
    title = "Admin key required"


class NotFoundError(ServiceError):
    status = 404
    code = "not_found"
    title = "Not found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class DatasetNotFoundError(NotFoundError):
    code = "dataset_not_found"


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class KeyNotFoundError(NotFoundError):
    code = "key_not_found"


class MethodNotAllowedError(ServiceError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"


class ConflictError(ServiceError):
    status = 409
    code = "conflict"
    title = "Conflict"


class IdempotencyConflictError(ConflictError):
    code = "idempotency_conflict"


class JobNotFinishedError(ConflictError):
    code = "job_not_finished"


class JobFinishedError(ConflictError):
    code = "job_finished"


class PayloadTooLargeError(ServiceError):
    status = 413
    code = "checkpoint_too_large"
    title = "Upload too large"


class RequestTimeoutError(ServiceError):
    status = 408
    code = "request_timeout"
    title = "Request timeout"


class RequestTooLargeError(ServiceError):
    status = 413
    code = "request_too_large"
    title = "Request too large"


class UnsupportedMediaTypeError(ServiceError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class UnprocessableError(ServiceError):
    """The request is well formed but its content cannot be used (intake-style codes)."""

    status = 422
    code = "validation_error"
    title = "Unprocessable content"


class InvalidCursorError(UnprocessableError):
    code = "invalid_cursor"


class RateLimitedError(ServiceError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class TooManyStreamsError(RateLimitedError):
    code = "too_many_streams"


class ServiceUnavailableError(ServiceError):
    status = 503
    code = "service_unavailable"
    title = "Service unavailable"


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
