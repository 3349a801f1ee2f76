"""Receive a multipart upload by streaming its file part to a temporary file, hashing it on the
way and stopping as soon as it exceeds the size cap (nothing is buffered whole in memory, and an
oversized upload is refused without being read to its end). An upload that stalls, or that
trickles in below a minimum rate, is cut off (408), so a client cannot hold a temporary file
and a connection for as long as it likes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from lrprobe.service.errors import (
    PayloadTooLargeError,
    RequestTimeoutError,
    ServiceError,
    UnprocessableError,
    UnsupportedMediaTypeError,
)
from lrprobe.service.settings import Settings

MAX_FIELD_BYTES = 1 << 20
MAX_FIELDS = 16
_MULTIPART_SLACK = 64 << 10  # boundaries, part headers and small form fields
_CONTROL = dict.fromkeys([*range(32), 127])  # NUL and other control characters: never in a name


@dataclass(frozen=True)
class UploadPace:
    """How slowly an upload may arrive: ``idle_s`` without a byte ends it, and after the first
    ``idle_s`` its average rate must stay at or above ``min_bytes_per_s``."""

    idle_s: float = 30.0
    min_bytes_per_s: float = 16 << 10

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadPace:
        return cls(settings.upload_idle_timeout_seconds, settings.upload_min_bytes_per_second)


def clean_filename(raw: str) -> str:
    """The client's file name as stored and shown: its last path part, without control
    characters, at most 255 characters."""
    name = os.path.basename(raw.replace("\\", "/")).translate(_CONTROL).strip()
    return name[:255] or "upload"


@dataclass
class ReceivedFile:
    path: Path
    filename: str
    size: int
    sha256: str


@dataclass
class ReceivedForm:
    file: ReceivedFile
    fields: dict[str, str] = field(default_factory=dict)


class _TooLargeError(Exception):
    pass


class _Receiver:
    """python-multipart callbacks that route the file part to disk and fields to memory."""

    def __init__(self, file_field: str, tmp_dir: Path, max_bytes: int) -> None:
        self.file_field = file_field
        self.tmp_dir = tmp_dir
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.file: ReceivedFile | None = None
        self.paths: list[Path] = []
        self._header_field = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._out: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._value = bytearray()
        self._filename: str | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        self._headers = {}
        self._header_field = b""
        self._value = bytearray()
        self._filename = None
        self._out = None

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        key = self._header_field.lower()
        self._headers[key] = self._headers.get(key, b"") + data[start:end]

    def header_end(self) -> None:
        self._header_field = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is not None and self._name == self.file_field:
            if self.file is not None:
                raise UnprocessableError(f"Send one file in the form field {self.file_field!r}.")
            self._filename = clean_filename(filename.decode("utf-8", "replace"))
            handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in part_end/cleanup
                dir=self.tmp_dir, prefix="upload-", delete=False
            )
            self.paths.append(Path(handle.name))
            self._out = handle
            self._hash = hashlib.sha256()
            self._size = 0
        elif len(self.fields) >= MAX_FIELDS:
            raise UnprocessableError(f"The form has more than {MAX_FIELDS} fields.")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._out is not None:
            self._size += len(chunk)
            if self._size > self.max_bytes:
                raise _TooLargeError
            self._hash.update(chunk)
            self._out.write(chunk)
        else:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise UnprocessableError(f"The form field {self._name!r} is over 1 MiB.")

    def part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            self.file = ReceivedFile(
                path=self.paths[-1],
                filename=self._filename or "upload",
                size=self._size,
                sha256=self._hash.hexdigest(),
            )
            self._out = None
        elif self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


@asynccontextmanager
async def receive_upload(
    request: Request,
    *,
    tmp_dir: Path,
    max_bytes: int,
    too_large: Callable[[], ServiceError],
    file_field: str = "file",
    pace: UploadPace | None = None,
) -> AsyncIterator[ReceivedForm]:
    """Stream ``request``'s multipart body; the temporary file is removed when the block ends.

    Raises ``UnsupportedMediaTypeError`` for a body that is not multipart/form-data, ``too_large()``
    beyond ``max_bytes``, ``UnprocessableError`` for a form without a file in ``file_field`` and
    ``RequestTimeoutError`` for an upload slower than ``pace``.
    """
    pace = pace or UploadPace()
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaTypeError(
            f"Send the file as multipart/form-data with the file in the field {file_field!r}, "
            f"e.g. curl -F {file_field}=@model.safetensors."
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + _MULTIPART_SLACK:
        raise too_large()
    receiver = _Receiver(file_field, tmp_dir, max_bytes)
    try:
        parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
        try:
            async for chunk in _paced(request, pace):
                await run_in_threadpool(parser.write, chunk)
            parser.finalize()
        except _TooLargeError:
            raise too_large() from None
        except FormParserError as exc:
            raise UnprocessableError(f"The multipart body is malformed ({exc}).") from None
        except ClientDisconnect:
            raise UnprocessableError("The upload was interrupted before it ended.") from None
        finally:
            receiver.close()
        if receiver.file is None:
            raise UnprocessableError(
                f"The form has no file in the field {file_field!r}; send it with "
                f"curl -F {file_field}=@PATH.",
                errors=[{"loc": ["body", file_field], "msg": "field required", "type": "missing"}],
            )
        yield ReceivedForm(file=receiver.file, fields=receiver.fields)
    finally:
        for path in receiver.paths:
            with suppress(FileNotFoundError):
                path.unlink()


def receive_artifact(
    request: Request, what: Literal["checkpoint", "dataset"], settings: Settings, tmp_dir: Path
) -> AbstractAsyncContextManager[ReceivedForm]:
    """:func:`receive_upload` of a checkpoint or a dataset under the settings' size cap
    (``{what}_too_large`` beyond it) and pace: the API's upload routes and the dashboard's."""
    cap = settings.max_upload_bytes

    def too_large() -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The {what} is over the limit of {cap} bytes; send a smaller file or ask the "
            "operator to raise LRPROBE_MAX_UPLOAD_BYTES.",
            code=f"{what}_too_large",
        )

    return receive_upload(
        request, tmp_dir=tmp_dir, max_bytes=cap, too_large=too_large,
        pace=UploadPace.from_settings(settings),
    )  # fmt: skip


async def _paced(request: Request, pace: UploadPace) -> AsyncIterator[bytes]:
    """``request.stream()``, cut off when it idles or falls below the minimum rate."""
    chunks = request.stream().__aiter__()
    start = time.monotonic()
    received = 0
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), pace.idle_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeoutError(
                f"The upload stopped arriving for {pace.idle_s:g} s; send it again."
            ) from None
        received += len(chunk)
        elapsed = time.monotonic() - start
        if elapsed > pace.idle_s and received < pace.min_bytes_per_s * elapsed:
            raise RequestTimeoutError(
                f"The upload arrived at {received / elapsed:.0f} bytes/s, under the minimum of "
                f"{pace.min_bytes_per_s:g}; send it over a faster connection."
            )
        if chunk:
            yield chunk
