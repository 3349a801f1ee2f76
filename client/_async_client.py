"""The asynchronous client: :class:`~client.Client`'s surface, awaitable."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import ExitStack
from types import TracebackType
from typing import Any, TypeVar

import httpx

from lrprobe.client import _calls as calls
from lrprobe.client._errors import error_from_response
from lrprobe.client._http import DEFAULT_TIMEOUT, RetryPolicy, headers, resolve_api_key, resolve_url
from lrprobe.client._jobs import AsyncJob, Follower
from lrprobe.client._recommendation import Recommendation
from lrprobe.client._sse import (
    STREAM_READ_TIMEOUT,
    SSEParser,
    StreamUnavailable,
    stream_headers,
    unusable_stream,
)
from lrprobe.client.schemas import (
    ApiKeyCreated,
    ApiKeyOut,
    BudgetSpec,
    DatasetOut,
    DeviceName,
    Health,
    JobStatusName,
    LossName,
    ModelOut,
    OptimizerSpec,
    PartitionSpec,
)

T = TypeVar("T")


class AsyncClient:
    """The lrprobe API from asyncio code; the same arguments and methods as
    :class:`~client.Client`, each awaitable (``list_jobs`` is an async iterator).

    >>> async with AsyncClient() as lrp:
    ...     job = await lrp.submit(model="MODEL_ID", data="builtin://digits")
    ...     rec = await (await job.wait()).recommendation()
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = resolve_url(base_url)
        self._headers = headers(resolve_api_key(api_key))
        self._retry = RetryPolicy(retries=retries, backoff=backoff)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, transport=transport
        )
        self._sleep = asyncio.sleep

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient(base_url={self.base_url!r})"

    # --- uploads -------------------------------------------------------------------------

    async def upload_model(
        self,
        path: str | os.PathLike[str],
        arch: str | None = None,
        arch_config: Mapping[str, Any] | None = None,
    ) -> ModelOut:
        """Upload a checkpoint: a safetensors state dict (``arch``/``arch_config`` name its
        built-in architecture unless its metadata does), a ``torch.save`` state dict (needs
        ``arch``), or a Hugging Face model folder (sent as a zip archive)."""
        return await self._send(calls.upload_model(path, arch, arch_config))

    async def get_model(self, model_id: str) -> ModelOut:
        return await self._send(calls.get_model(model_id))

    async def upload_dataset(self, path: str | os.PathLike[str]) -> DatasetOut:
        """Upload a dataset file (.npz, .pt, .csv, .parquet, .npy, .bin); pass the result (or
        its ``uri``) as a job's ``data``."""
        return await self._send(calls.upload_dataset(path))

    async def get_dataset(self, dataset_id: str) -> DatasetOut:
        return await self._send(calls.get_dataset(dataset_id))

    # --- jobs ----------------------------------------------------------------------------

    async def submit(
        self,
        model: str | ModelOut | os.PathLike[str],
        data: str | DatasetOut | os.PathLike[str],
        loss: LossName = "cross_entropy",
        optimizer: str | Mapping[str, Any] | OptimizerSpec = "sgd",
        partition: str | Mapping[str, Any] | PartitionSpec = "layer",
        budget: Mapping[str, Any] | BudgetSpec | None = None,
        seed: int = 0,
        *,
        block_size: int | None = None,
        device: DeviceName | None = None,
        label: str | None = None,
        run: str | None = None,
        run_step: int | None = None,
        idempotency_key: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        progress: bool = True,
    ) -> AsyncJob:
        """Queue a probe. ``model`` is a model id, an uploaded :class:`ModelOut`, or a local
        path (uploaded first); ``data`` a reference (``builtin://digits``, ``upload://ID``, …),
        a :class:`DatasetOut`, or a local path (uploaded first). The request carries an
        ``Idempotency-Key`` (a new one per call unless given), so its retries never make a second
        job. With ``wait=True``, returns once the job is final."""
        if isinstance(model, os.PathLike):
            model = await self.upload_model(model)
        if isinstance(data, os.PathLike):
            data = await self.upload_dataset(data)
        spec = calls.job_spec(
            model=model, data=data, loss=loss, optimizer=optimizer, partition=partition,
            budget=budget, seed=seed, block_size=block_size, device=device, label=label,
            run=run, run_step=run_step,
        )  # fmt: skip
        job = AsyncJob(self, await self._send(calls.submit(spec, idempotency_key)))
        if wait:
            await job.wait(timeout=timeout, progress=progress)
        return job

    async def get_job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, await self._send(calls.get_job(job_id)))

    async def list_jobs(
        self, status: JobStatusName | None = None, *, run: str | None = None, page_size: int = 50
    ) -> AsyncIterator[AsyncJob]:
        """This key's jobs (of training run ``run`` if given), newest first, fetching pages as
        the iteration goes."""
        cursor = None
        while True:
            page = await self._send(calls.list_jobs(status, cursor, page_size, run))
            for item in page.items:
                yield AsyncJob(self, item)
            cursor = page.next_cursor
            if cursor is None:
                return

    async def cancel(self, job_id: str | AsyncJob) -> AsyncJob:
        """Cancel a queued job, or ask a running one to stop at its next batch."""
        job_id = job_id.id if isinstance(job_id, AsyncJob) else job_id
        return AsyncJob(self, await self._send(calls.cancel(job_id)))

    async def wait(
        self, job_id: str | AsyncJob, timeout: float | None = None, progress: bool = True
    ) -> AsyncJob:
        """See :meth:`AsyncJob.wait`."""
        job = job_id if isinstance(job_id, AsyncJob) else await self.get_job(job_id)
        return await job.wait(timeout=timeout, progress=progress)

    async def recommendation(self, job_id: str | AsyncJob) -> Recommendation:
        """The recommendation of a succeeded job (see :meth:`AsyncJob.recommendation`)."""
        job_id = job_id.id if isinstance(job_id, AsyncJob) else job_id
        data = await self._send(calls.recommendation(job_id))
        return Recommendation(data, job_id=job_id)

    # --- keys (admin) and health ---------------------------------------------------------

    async def create_key(self, name: str, *, admin: bool = False) -> ApiKeyCreated:
        """Create an API key (needs an admin key); its ``secret`` is shown this once."""
        return await self._send(calls.create_key(name, admin))

    async def list_keys(self) -> list[ApiKeyOut]:
        return await self._send(calls.list_keys())

    async def revoke_key(self, key_id: str) -> ApiKeyOut:
        return await self._send(calls.revoke_key(key_id))

    async def health(self) -> Health:
        return await self._send(calls.health())

    # --- sending -------------------------------------------------------------------------

    async def _send(self, call: calls.Call[T]) -> T:
        attempt = 0
        while True:
            try:
                with ExitStack() as stack:
                    files = stack.enter_context(call.upload.open()) if call.upload else None
                    response = await self._http.request(
                        call.method,
                        call.path,
                        params=call.params,
                        json=call.json,
                        files=files,
                        data=call.upload.fields if call.upload else None,
                        headers=self._headers | call.headers,
                    )
            except httpx.TransportError as error:
                delay = self._retry.after_error(error, attempt, call.idempotent, self.base_url)
            else:
                retry_in = self._retry.after_response(response, attempt, call.idempotent)
                if retry_in is None:
                    if response.is_error:
                        raise error_from_response(response)
                    return call.parse(response)
                delay = retry_in
            attempt += 1
            await self._sleep(delay)

    async def _follow(self, follower: Follower, poll_interval: float) -> None:
        try:
            if await self._stream(follower):
                return
        except StreamUnavailable:
            pass
        while True:
            page = await self._send(calls.events(follower.job_id, follower.cursor))
            if follower.on_page(page):
                return
            follower.check_deadline()
            left = follower.remaining()
            await self._sleep(poll_interval if left is None else max(0.0, min(poll_interval, left)))

    async def _stream(self, follower: Follower) -> bool:
        """Follow the SSE stream; True if it reached the job's end, False if it stopped early."""
        left = follower.remaining()
        read = STREAM_READ_TIMEOUT if left is None else max(0.05, min(STREAM_READ_TIMEOUT, left))
        parser = SSEParser()
        try:
            async with self._http.stream(
                "GET",
                calls.events_path(follower.job_id),
                params={"after": follower.cursor},
                headers=self._headers | stream_headers(),
                timeout=httpx.Timeout(read),
            ) as response:
                if response.is_error:
                    await response.aread()
                    raise unusable_stream(error_from_response(response))
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    raise StreamUnavailable
                async for line in response.aiter_lines():
                    event = parser.feed(line)
                    if event is not None and follower.on_sse(event):
                        return True
                    follower.check_deadline()
        except httpx.TransportError:
            follower.check_deadline()
            raise StreamUnavailable from None
        return False
