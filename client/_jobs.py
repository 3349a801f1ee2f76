"""A submitted job: its state, waiting for it (server-sent events, else polling), its answer."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from lrprobe.client._errors import Conflict, JobFailed, WaitTimeout
from lrprobe.client._recommendation import Recommendation
from lrprobe.client._sse import ServerSentEvent
from lrprobe.client.schemas import JobEventList, JobOut, JobStatusName

if TYPE_CHECKING:
    from lrprobe.client._async_client import AsyncClient
    from lrprobe.client._client import Client

FINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class _ProgressBar:
    """A tqdm bar when asked for and tqdm is installed; otherwise nothing."""

    def __init__(self, enabled: bool, job: JobOut) -> None:
        self._bar: Any = None
        self._label = f"job {job.id[:8]}"
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(
            total=job.progress.total or None,
            initial=job.progress.done,
            desc=self._label,
            unit="batch",
            leave=True,
            # No rate: progress arrives in jumps from the service's events, so tqdm's
            # batches-per-second would read the gaps between them, not the probe's speed.
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )
        self._bar.set_postfix_str(job.status)

    def show(self, kind: str, data: dict[str, Any]) -> None:
        if self._bar is None:
            return
        if kind == "progress":
            total = data.get("total")
            if total and total != self._bar.total:
                self._bar.reset(total=total)
            self._bar.n = int(data.get("done") or 0)
            if data.get("phase"):
                self._bar.set_description(f"{self._label} {data['phase']}")
            self._bar.refresh()
        elif kind in ("status", "end") and "status" in data:
            self._bar.set_postfix_str(str(data["status"]))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Follower:
    """Tracks how far the events of one job were read, against an optional deadline."""

    def __init__(self, job: JobOut, timeout: float | None, progress: bool) -> None:
        self.job_id = job.id
        self.cursor = 0
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.bar = _ProgressBar(progress, job)

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check_deadline(self) -> None:
        left = self.remaining()
        if left is not None and left <= 0:
            raise WaitTimeout(
                f"job {self.job_id} was not final after {self.timeout:g} s; it goes on (wait "
                "again, or cancel it)",
                code="wait_timeout",
            )

    def on_sse(self, event: ServerSentEvent) -> bool:
        """Handle one streamed event; True once the stream says the job is final."""
        try:
            data = json.loads(event.data)
        except json.JSONDecodeError:
            data = {}
        if event.id is not None and event.id.isdigit():
            self.cursor = int(event.id)
        self.bar.show(event.event, data if isinstance(data, dict) else {})
        return event.event == "end"

    def on_page(self, page: JobEventList) -> bool:
        """Handle one page of the polling fallback; True once the job is final."""
        for event in page.items:
            self.bar.show(event.kind, event.data)
            self.cursor = max(self.cursor, event.id)
        return page.final


def _failed(job: JobOut, error: Conflict) -> Exception:
    return JobFailed(job) if job.status in ("failed", "cancelled") else error


class _JobBase:
    def __init__(self, data: JobOut) -> None:
        self.data = data

    @property
    def id(self) -> str:
        return self.data.id

    @property
    def status(self) -> JobStatusName:
        return self.data.status

    @property
    def done(self) -> bool:
        """True once the job is final (succeeded, failed or cancelled)."""
        return self.data.status in FINAL

    def __repr__(self) -> str:
        p = self.data.progress
        progress = f", progress={p.done}/{p.total}" if p.total else ""
        error = f", error={self.data.error.code!r}" if self.data.error else ""
        return f"{type(self).__name__}(id={self.id!r}, status={self.status!r}{progress}{error})"


class Job(_JobBase):
    """A job of :class:`~client.Client`; ``data`` is its last known :class:`JobOut`."""

    def __init__(self, client: Client, data: JobOut) -> None:
        super().__init__(data)
        self._client = client

    def refresh(self) -> Job:
        self.data = self._client.get_job(self.id).data
        return self

    def cancel(self) -> Job:
        self.data = self._client.cancel(self.id).data
        return self

    def wait(
        self, timeout: float | None = None, progress: bool = True, poll_interval: float = 1.0
    ) -> Job:
        """Block until the job is final and return it (refreshed). Follows the job's event stream
        (with a tqdm progress bar if tqdm is installed and ``progress``), falling back to
        polling; raises :class:`WaitTimeout` after ``timeout`` seconds (the job goes on)."""
        if not self.done:
            follower = Follower(self.data, timeout, progress)
            try:
                self._client._follow(follower, poll_interval)
            finally:
                follower.bar.close()
        return self.refresh()

    def recommendation(self) -> Recommendation:
        """The per-group learning rates; raises :class:`JobFailed` for a failed or cancelled
        job and :class:`Conflict` (``job_not_finished``) for one still running."""
        try:
            return self._client.recommendation(self.id)
        except Conflict as error:
            raise _failed(self.refresh().data, error) from None


class AsyncJob(_JobBase):
    """A job of :class:`~client.AsyncClient`; the same surface, awaitable."""

    def __init__(self, client: AsyncClient, data: JobOut) -> None:
        super().__init__(data)
        self._client = client

    async def refresh(self) -> AsyncJob:
        self.data = (await self._client.get_job(self.id)).data
        return self

    async def cancel(self) -> AsyncJob:
        self.data = (await self._client.cancel(self.id)).data
        return self

    async def wait(
        self, timeout: float | None = None, progress: bool = True, poll_interval: float = 1.0
    ) -> AsyncJob:
        """See :meth:`Job.wait`."""
        if not self.done:
            follower = Follower(self.data, timeout, progress)
            try:
                await self._client._follow(follower, poll_interval)
            finally:
                follower.bar.close()
        return await self.refresh()

    async def recommendation(self) -> Recommendation:
        """See :meth:`Job.recommendation`."""
        try:
            return await self._client.recommendation(self.id)
        except Conflict as error:
            raise _failed((await self.refresh()).data, error) from None
