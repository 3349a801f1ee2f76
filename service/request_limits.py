"""Limits on request bodies, checked before any route, dependency or authentication runs.

Every route has a body limit whatever the ``Content-Type``:

- the upload routes (``UPLOAD_ROUTES``) stream their multipart body to disk after the key is
  checked, capped by ``LRPROBE_MAX_UPLOAD_BYTES`` in ``lrprobe.service.upload_stream``;
- the dashboard's sign-in takes only a small urlencoded form (``MAX_SIGN_IN_BYTES``);
- every other body, multipart included, is capped at ``MAX_BODY_BYTES``: refused from its
  ``Content-Length`` without reading a byte, or while it arrives. Multipart is never parsed
  here or by those routes (415); under ``/v1/`` a body must be JSON, under ``/ui/`` an
  urlencoded form.

A body that stops arriving for ``idle_timeout_s``, or that after that long arrives slower than
``min_bytes_per_s`` on average, gets a 408, so a client cannot hold a request open by trickling
bytes.
"""

from __future__ import annotations

import asyncio
import time

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrprobe.service.errors import (
    RequestTimeoutError,
    RequestTooLargeError,
    ServiceError,
    UnsupportedMediaTypeError,
)
from lrprobe.service.problems import problem_response

MAX_BODY_BYTES = 1 << 20
MAX_SIGN_IN_BYTES = 8 << 10
UPLOAD_ROUTES = frozenset(
    {
        ("POST", "/v1/models"),
        ("POST", "/v1/datasets"),
        ("POST", "/ui/models"),
        ("POST", "/ui/datasets"),
    }
)
SIGN_IN_ROUTE = ("POST", "/ui/sign-in")
_FORM = "application/x-www-form-urlencoded"
# A body refused before it was read whole leaves bytes on the connection that no request owns.
_CLOSE = {"Connection": "close"}


class _TimeoutError(Exception):
    pass


class RequestLimitsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_BODY_BYTES,
        idle_timeout_s: float = 30.0,
        min_bytes_per_s: float = 16 << 10,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.min_bytes_per_s = min_bytes_per_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = (scope["method"], scope["path"])
        if route in UPLOAD_ROUTES:
            await self.app(scope, receive, send)  # authenticated, then streamed and capped
            return
        headers = Headers(scope=scope)
        if route != SIGN_IN_ROUTE and not (
            "content-length" in headers or "transfer-encoding" in headers
        ):
            # No body (HTTP/1.1 frames one only with either header), so nothing to check or
            # read: the common GET skips a read with a timeout (a task per request)
            await self.app(scope, receive, send)
            return
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        limit = MAX_SIGN_IN_BYTES if route == SIGN_IN_ROUTE else self.max_bytes
        too_large = RequestTooLargeError(
            f"The request body is over {limit} bytes; this route takes a JSON body or form of "
            "at most that size (files go to POST /v1/models or /v1/datasets).",
            headers=_CLOSE,
        )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _problem(scope, send, too_large)
            return
        try:
            body = await self._read(receive, limit)
        except _TimeoutError:
            await _problem(
                scope,
                send,
                RequestTimeoutError(
                    f"The request body stopped arriving, or arrived slower than "
                    f"{self.min_bytes_per_s:g} bytes/s after {self.idle_timeout_s:g} s; send it "
                    "again in one go.",
                    headers=_CLOSE,
                ),
            )
            return
        if body is None:
            await _problem(scope, send, too_large)
            return
        error = _wrong_type(scope["path"], route, media_type, bool(body))
        if error is not None:
            await _problem(scope, send, error)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None once it passes ``limit``."""
        body = bytearray()
        start = time.monotonic()
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout_s)
            except TimeoutError:
                raise _TimeoutError from None
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            elapsed = time.monotonic() - start
            if elapsed > self.idle_timeout_s and len(body) < self.min_bytes_per_s * elapsed:
                raise _TimeoutError
            if len(body) > limit:
                return None
            if not message.get("more_body", False):
                break
        return bytes(body)


def _wrong_type(
    path: str, route: tuple[str, str], media_type: str, has_body: bool
) -> ServiceError | None:
    if route == SIGN_IN_ROUTE and media_type != _FORM:
        return UnsupportedMediaTypeError(
            f"Sign in with the dashboard's form ({_FORM}), not {media_type or 'no content type'}."
        )
    if not has_body:
        return None
    if media_type == "multipart/form-data":
        return UnsupportedMediaTypeError(
            "Only POST /v1/models and /v1/datasets take multipart/form-data; send this route a "
            "JSON body with Content-Type: application/json."
        )
    json_body = media_type == "application/json" or media_type.endswith("+json")
    if path.startswith("/v1/") and not json_body:
        return UnsupportedMediaTypeError(
            f"Send a JSON body with Content-Type: application/json, or a file upload as "
            f"multipart/form-data (got {media_type or 'no content type'!r})."
        )
    if path.startswith("/ui/") and media_type != _FORM:
        return UnsupportedMediaTypeError(
            f"The dashboard's forms are sent as {_FORM} (got {media_type or 'no content type'!r})."
        )
    return None


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
    await problem_response(error, scope["path"])(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
