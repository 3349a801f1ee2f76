"""What runs in a probe's own process: load the checkpoint and data through the intake (the
pipeline's :func:`~lrprobe.worker.pipeline.load_inputs`, as ``lrprobe probe`` does), probe,
and send progress and the outcome to the worker over a pipe.

The worker (``lrprobe.worker.supervisor``) starts one such process per job and alone talks to
the database; this process gets everything it needs in a :class:`ProbeWork` and sends back
:class:`~lrprobe.service.lifecycle.Progress`, then one :class:`Succeeded` or :class:`Failed`.
A probe that never returns (a catastrophic regex, a stuck kernel), exhausts memory or crashes
takes only this process down: the worker kills it at the time limit and goes on.

:func:`outcome` is the same code run in the worker's own process when isolation is off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import torch

from lrprobe.client.error_catalogue import CATALOGUE
from lrprobe.service.lifecycle import Progress
from lrprobe.service.settings import Settings
from lrprobe.worker import devices
from lrprobe.worker.artifact_files import artifact_file
from lrprobe.worker.intake.data.policy import DataPolicy
from lrprobe.worker.intake.errors import IntakeError
from lrprobe.worker.newton import NumericalError, ProbeProgress
from lrprobe.worker.pipeline import ProbeRequest, load_inputs, run_probe

log = logging.getLogger(__name__)

# How often the child sends progress through the pipe (the worker stores it at most once a
# second); the last batch is always sent.
SEND_INTERVAL_SECONDS = 0.2
# How CPU allocators (torch's "DefaultCPUAllocator: can't allocate memory") and CUDA phrase an
# allocation failure that reaches Python as a plain RuntimeError.
_OUT_OF_MEMORY_MESSAGES = ("can't allocate memory", "out of memory", "cannot allocate memory")
OUT_OF_MEMORY_ADVICE = CATALOGUE["out_of_memory"].advice
INTERNAL_ERROR_ADVICE = (
    "The worker hit an unexpected error (it is in the worker's log); retry the job, and report "
    "it if it happens again."
)
_PR_SET_PDEATHSIG = 1


class ProbeStopped(Exception):  # noqa: N818 - it is a signal, not an error
    """Raised from the progress callback to stop an in-process probe between batches."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "cancel" | "lost" | "time_limit"


class JobError(Exception):
    """A failure with a stable code and a sentence of advice for the user."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class UploadedData:
    """A dataset uploaded with ``POST /v1/datasets`` (looked up by the worker)."""

    sha256: str
    format: str | None


@dataclass(frozen=True)
class ProbeWork:
    """One job, resolved by the worker from its rows: all the probe process needs."""

    job_id: str
    settings: Settings
    checkpoint_sha256: str
    arch: str | None
    arch_config: dict[str, Any] | None
    data: str
    uploaded_data: UploadedData | None
    request: ProbeRequest


@dataclass(frozen=True)
class Succeeded:
    recommendation: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    code: str
    detail: str


Outcome = Succeeded | Failed


def outcome(work: ProbeWork, progress: Callable[[ProbeProgress], None]) -> Outcome:
    """Run ``work``; every failure becomes a :class:`Failed` with its code.

    :class:`ProbeStopped` raised by ``progress`` goes through (the probe restores the model
    first).
    """
    try:
        return Succeeded(execute(work, progress))
    except (ProbeStopped, KeyboardInterrupt):
        raise
    except JobError as failure:
        return Failed(failure.code, failure.detail)
    except Exception as exc:
        if out_of_memory(exc):
            log.warning("job %s ran out of memory", work.job_id, exc_info=True)
            return Failed("out_of_memory", OUT_OF_MEMORY_ADVICE)
        log.exception("job %s failed with an unexpected error", work.job_id)
        return Failed("internal_error", INTERNAL_ERROR_ADVICE)


def execute(work: ProbeWork, progress: Callable[[ProbeProgress], None]) -> dict[str, Any]:
    """Load, probe, and return the recommendation (``ProbeResult.to_dict()``).

    Raises:
        JobError: the intake or the numeric core refused (a code and advice).
    """
    settings = work.settings
    try:
        checkpoint = artifact_file(settings, work.checkpoint_sha256)
        uri, policy = _data_source(work)
        loaded, dataset = load_inputs(
            checkpoint, uri, policy, work.request,
            arch=work.arch, arch_config=work.arch_config, max_bytes=settings.max_upload_bytes,
            allow_pt2=settings.allow_pt2,
        )  # fmt: skip
    except IntakeError as exc:
        raise JobError(exc.code, exc.detail) from None
    try:
        return run_probe(loaded.model, dataset, work.request, progress).to_dict()
    except NumericalError as exc:
        raise JobError(
            exc.code,
            f"{str(exc).rstrip('.')}. Lower the checkpoint's loss scale or check the data and "
            "loss for non-finite values.",
        ) from None
    except IntakeError as exc:  # model, data and loss checked against each other, per batch
        raise JobError(exc.code, exc.detail) from None
    except ValueError as exc:  # the core's argument checks name what to change
        raise JobError("invalid_probe_arguments", f"{exc}.") from None


def out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(
        message in str(exc).lower() for message in _OUT_OF_MEMORY_MESSAGES
    )


def _data_source(work: ProbeWork) -> tuple[str, DataPolicy]:
    """The job's data reference and the policy it is read under; an uploaded dataset becomes a
    file:// reference to its artifact, whose folder the policy may read."""
    settings = work.settings
    roots = [Path(root).resolve() for root in settings.data_roots]
    uri = work.data
    if work.uploaded_data is not None:
        parts = urlsplit(uri)
        path = artifact_file(settings, work.uploaded_data.sha256)
        roots.append(path.parent.resolve())
        fmt = work.uploaded_data.format
        query = "&".join(q for q in (f"format={fmt}" if fmt else "", parts.query) if q)
        uri = urlunsplit(("file", "", str(path.resolve()), query, parts.fragment))
    policy = DataPolicy(
        roots=tuple(roots),
        allowed_hosts=tuple(settings.allowed_data_hosts),
        allow_private_addresses=settings.allow_private_addresses,
        max_bytes=settings.max_upload_bytes,
        cache_dir=settings.data_dir.resolve() / "cache" / "data",
    )
    return uri, policy


# --- the child process -------------------------------------------------------------------------


def child_main(work: ProbeWork, conn: Connection) -> None:
    """The probe process's entry point: limits, then the probe, then one outcome message."""
    die_with_parent()
    settings = work.settings
    if settings.probe_memory_limit_bytes is not None:
        # RLIMIT_DATA counts the heap and private anonymous mappings (what torch's CPU
        # allocator uses) but not CUDA's address-space reservations, which RLIMIT_AS would.
        limit = settings.probe_memory_limit_bytes
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    devices.set_threads(settings.torch_threads)
    fraction = settings.probe_cuda_memory_fraction
    if fraction is not None and work.request.device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(fraction)
    last_sent = -float("inf")

    def send_progress(p: ProbeProgress) -> None:
        nonlocal last_sent
        now = time.monotonic()
        if now - last_sent >= SEND_INTERVAL_SECONDS or p.done >= p.total:
            last_sent = now
            conn.send(Progress(p.done, p.total, p.phase))

    result = outcome(work, send_progress)
    conn.send(result)
    conn.close()


def ready() -> None:
    """A child that does nothing: started once to wait for the forkserver's imports."""


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), so that a probe never
    outlives the worker that supervises it, even one killed with SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
