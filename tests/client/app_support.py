"""The real app for SDK contract and CLI tests: a migrated SQLite template, a simulated worker."""

from __future__ import annotations

from lrprobe.service import lifecycle
from lrprobe.service.lifecycle import Progress
from tests.service.api_support import RunningApi, probe_result


def finish(api: RunningApi, job_id: str, *, fail: bool = False) -> None:
    """What a worker does: claim, report progress, store a result (or fail)."""
    assert lifecycle.claim(api.sessions, job_id, "w", 60) is not None
    lifecycle.heartbeat(api.sessions, job_id, "w", 60, Progress(4, 8, "summaries"))
    if fail:
        lifecycle.fail(api.sessions, job_id, "w", "out_of_memory", "Lower budget.batch_size.")
    else:
        lifecycle.succeed(api.sessions, job_id, "w", probe_result(), "gn-probe/0.1")
