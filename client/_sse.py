"""Following a job's event stream: a server-sent events parser (the WHATWG event-stream
format) fed one line at a time, so that the sync and the async client share it, and when to
give the stream up for polling."""

from __future__ import annotations

from dataclasses import dataclass

from lrprobe.client._errors import LrprobeError, ServerError

# The service sends a keep-alive every 15 s; a stream silent for longer is broken.
STREAM_READ_TIMEOUT = 20.0


class StreamUnavailable(Exception):  # noqa: N818 - a signal, not an error
    """The event stream cannot be used (no SSE on the way, or it broke): poll instead."""


def stream_headers() -> dict[str, str]:
    return {"Accept": "text/event-stream", "Cache-Control": "no-cache"}


def unusable_stream(error: LrprobeError) -> Exception:
    """What an error answer to the stream request means: errors about the job or the key are
    the caller's; a server or a proxy that cannot stream, or a key that holds all the streams
    it may (``too_many_streams``), means: poll."""
    if isinstance(error, ServerError) or error.code in (
        "not_found", "method_not_allowed", "too_many_streams",
    ):  # fmt: skip
        return StreamUnavailable()
    if error.code.startswith("http_"):
        return StreamUnavailable()
    return error


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """``feed(line)`` returns the event that a blank line completes, else None. Comments
    (keep-alives) and events without data are dropped, as browsers do."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self.last_event_id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if self._id is not None:
            self.last_event_id = self._id
        event = None
        if self._data:
            event = ServerSentEvent(
                event=self._event or "message",
                data="\n".join(self._data),
                id=self._id,
                retry=self._retry,
            )
        self._event, self._data, self._id, self._retry = "", [], None, None
        return event
