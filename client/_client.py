"""The synchronous client."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from types import TracebackType
from typing import Any, TypeVar

import httpx

from lrprobe.client import _calls as calls
from lrprobe.client._errors import error_from_response
from lrprobe.client._http import DEFAULT_TIMEOUT, RetryPolicy, headers, resolve_api_key, resolve_url
from lrprobe.client._jobs import Follower, Job
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


class Client:
    """The lrprobe API from Python.

    ``base_url`` and ``api_key`` default to ``$LRPROBE_URL`` (else ``http://127.0.0.1:8000``)
    and ``$LRPROBE_API_KEY``. ``transport`` (e.g. ``httpx.MockTransport``) or a whole
    ``http_client`` may be injected; the client closes only what it created. Idempotent calls
    are retried ``retries`` times with exponential backoff on connection errors and 502/503/504.

    >>> with Client() as lrp:
    ...     job = lrp.submit(model=lrp.upload_model("model.safetensors"), data="builtin://digits")
    ...     rec = job.wait().recommendation()
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url = resolve_url(base_url)
        self._headers = headers(resolve_api_key(api_key))
        self._retry = RetryPolicy(retries=retries, backoff=backoff)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport
        )
        self._sleep = time.sleep

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"

    # --- uploads -------------------------------------------------------------------------

    def upload_model(
        self,
        path: str | os.PathLike[str],
        arch: str | None = None,
        arch_config: Mapping[str, Any] | None = None,
    ) -> ModelOut:
        """Upload a checkpoint: a safetensors state dict (``arch``/``arch_config`` name its
        built-in architecture unless its metadata does), a ``torch.save`` state dict (needs
        ``arch``), or a Hugging Face model folder (sent as a zip archive)."""
        return self._send(calls.upload_model(path, arch, arch_config))

    def get_model(self, model_id: str) -> ModelOut:
        return self._send(calls.get_model(model_id))

    def upload_dataset(self, path: str | os.PathLike[str]) -> DatasetOut:
        """Upload a dataset file (.npz, .pt, .csv, .parquet, .npy, .bin); pass the result (or
        its ``uri``) as a job's ``data``."""
        return self._send(calls.upload_dataset(path))

    def get_dataset(self, dataset_id: str) -> DatasetOut:
        return self._send(calls.get_dataset(dataset_id))

    # --- jobs ----------------------------------------------------------------------------

    def submit(
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
    ) -> Job:
        """Queue a probe. ``model`` is a model id, an uploaded :class:`ModelOut`, or a local
        path (uploaded first); ``data`` a reference (``builtin://digits``, ``upload://ID``, …),
        a :class:`DatasetOut`, or a local path (uploaded first). The request carries an
        ``Idempotency-Key`` (a new one per call unless given), so its retries never make a second
        job. With ``wait=True``, returns once the job is final."""
        if isinstance(model, os.PathLike):
            model = self.upload_model(model)
        if isinstance(data, os.PathLike):
            data = self.upload_dataset(data)
        spec = calls.job_spec(
            model=model, data=data, loss=loss, optimizer=optimizer, partition=partition,
            budget=budget, seed=seed, block_size=block_size, device=device, label=label,
            run=run, run_step=run_step,
        )  # fmt: skip
        job = Job(self, self._send(calls.submit(spec, idempotency_key)))
        if wait:
            job.wait(timeout=timeout, progress=progress)
        return job

    def get_job(self, job_id: str) -> Job:
        return Job(self, self._send(calls.get_job(job_id)))

    def list_jobs(
        self, status: JobStatusName | None = None, *, run: str | None = None, page_size: int = 50
    ) -> Iterator[Job]:
        """This key's jobs (of training run ``run`` if given), newest first, fetching pages as
        the iteration goes."""
        cursor = None
        while True:
            page = self._send(calls.list_jobs(status, cursor, page_size, run))
            for item in page.items:
                yield Job(self, item)
            cursor = page.next_cursor
            if cursor is None:
                return

    def cancel(self, job_id: str | Job) -> Job:
        """Cancel a queued job, or ask a running one to stop at its next batch."""
        job_id = job_id.id if isinstance(job_id, Job) else job_id
        return Job(self, self._send(calls.cancel(job_id)))

    def wait(self, job_id: str | Job, timeout: float | None = None, progress: bool = True) -> Job:
        """See :meth:`Job.wait`."""
        job = job_id if isinstance(job_id, Job) else self.get_job(job_id)
        return job.wait(timeout=timeout, progress=progress)

    def recommendation(self, job_id: str | Job) -> Recommendation:
        """The recommendation of a succeeded job (see :meth:`Job.recommendation`)."""
        job_id = job_id.id if isinstance(job_id, Job) else job_id
        return Recommendation(self._send(calls.recommendation(job_id)), job_id=job_id)

    # --- keys (admin) and health ---------------------------------------------------------

    def create_key(self, name: str, *, admin: bool = False) -> ApiKeyCreated:
        """Create an API key (needs an admin key); its ``secret`` is shown this once."""
        return self._send(calls.create_key(name, admin))

    def list_keys(self) -> list[ApiKeyOut]:
        return self._send(calls.list_keys())

    def revoke_key(self, key_id: str) -> ApiKeyOut:
        return self._send(calls.revoke_key(key_id))

    def health(self) -> Health:
        return self._send(calls.health())

    # --- sending -------------------------------------------------------------------------

    def _send(self, call: calls.Call[T]) -> T:
        attempt = 0
        while True:
            try:
                with ExitStack() as stack:
                    files = stack.enter_context(call.upload.open()) if call.upload else None
                    response = self._http.request(
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
            self._sleep(delay)

    def _follow(self, follower: Follower, poll_interval: float) -> None:
        try:
            if self._stream(follower):
                return
        except StreamUnavailable:
            pass
        while True:
            if follower.on_page(self._send(calls.events(follower.job_id, follower.cursor))):
                return
            follower.check_deadline()
            left = follower.remaining()
            self._sleep(poll_interval if left is None else max(0.0, min(poll_interval, left)))

    def _stream(self, follower: Follower) -> bool:
        """Follow the SSE stream; True if it reached the job's end, False if it stopped early."""
        left = follower.remaining()
        read = STREAM_READ_TIMEOUT if left is None else max(0.05, min(STREAM_READ_TIMEOUT, left))
        parser = SSEParser()
        try:
            with self._http.stream(
                "GET",
                calls.events_path(follower.job_id),
                params={"after": follower.cursor},
                headers=self._headers | stream_headers(),
                timeout=httpx.Timeout(read),
            ) as response:
                if response.is_error:
                    response.read()
                    raise unusable_stream(error_from_response(response))
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    raise StreamUnavailable
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is not None and follower.on_sse(event):
                        return True
                    follower.check_deadline()
        except httpx.TransportError:
            follower.check_deadline()
            raise StreamUnavailable from None
        return False
