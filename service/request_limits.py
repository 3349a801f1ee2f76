"""Limits on request bodies that are not streamed uploads, checked before any route runs.

Multipart uploads are streamed to disk and capped by ``lrprobe.service.upload_stream``; every
other body is read whole by its route, so it is capped here (``MAX_BODY_BYTES``, from
``Content-Length`` or while it arrives) and, under ``/v1/``, must be JSON: a form or plain text
gets a 415 that says what to send instead of a confusing validation error.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrprobe.service.errors import (
    PROBLEM_MEDIA_TYPE,
    ServiceError,
    UnsupportedMediaTypeError,
    problem_body,
)

MAX_BODY_BYTES = 1 << 20


class RequestTooLargeError(ServiceError):
    status = 413
    code = "request_too_large"
    title = "Request too large"


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == "multipart/form-data":
            await self.app(scope, receive, send)  # streamed and capped by the upload route
            return
        length = headers.get("content-length")
        too_large = RequestTooLargeError(
            f"The request body is over {self.max_bytes} bytes; send the file as a multipart "
            "upload, or a smaller JSON body."
        )
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _problem(scope, send, too_large)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _problem(scope, send, too_large)
                return
            if not message.get("more_body", False):
                break
        json_body = media_type == "application/json" or media_type.endswith("+json")
        if scope["path"].startswith("/v1/") and body and not json_body:
            error = UnsupportedMediaTypeError(
                f"Send a JSON body with Content-Type: application/json, or a file upload as "
                f"multipart/form-data (got {media_type or 'no content type'!r})."
            )
            await _problem(scope, send, error)
            return
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # the disconnect, when the client goes away

    return replay


async def _problem(scope: Scope, send: Send, error: ServiceError) -> None:
    content: dict[str, Any] = problem_body(error, scope["path"])
    response = JSONResponse(content, status_code=error.status, media_type=PROBLEM_MEDIA_TYPE)
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
