"""Per-process device setup: one GPU per worker process, and torch's thread count.

Must run in the process that will run probes, before it touches CUDA: ``CUDA_VISIBLE_DEVICES``
is read once, when CUDA initialises. A worker's index comes from ``LRPROBE_WORKER_INDEX`` (one
container or ``celery worker`` per GPU), else from the prefork child's index.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

log = logging.getLogger(__name__)

WORKER_INDEX_ENV = "LRPROBE_WORKER_INDEX"


def visible_gpus() -> list[str]:
    """The GPUs this process may use before pinning: ``CUDA_VISIBLE_DEVICES`` or all of them."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [d.strip() for d in declared.split(",") if d.strip() and d.strip() != "-1"]
    # Ask nvidia-smi: counting through torch would initialise CUDA in this process, after which
    # CUDA_VISIBLE_DEVICES is no longer read.
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run([smi, "--list-gpus"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    count = sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))
    return [str(i) for i in range(count)]


def pin_gpu(index: int) -> str | None:
    """Make exactly one GPU visible (the ``index``-th, round robin); None without GPUs."""
    gpus = visible_gpus()
    if not gpus:
        return None
    chosen = gpus[index % len(gpus)]
    os.environ["CUDA_VISIBLE_DEVICES"] = chosen
    return chosen


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads for this process (None: leave torch's choice)."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


def worker_index(child_index: int | None = None) -> int:
    value = os.environ.get(WORKER_INDEX_ENV)
    if value is not None and value.strip().isdigit():
        return int(value)
    return child_index or 0


def setup_process(threads: int | None, child_index: int | None = None) -> None:
    """Pin a GPU and set threads for the process about to run probes."""
    index = worker_index(child_index)
    gpu = pin_gpu(index)
    set_threads(threads)
    log.info("worker process %s: index %d, GPU %s, torch threads %s",
             os.getpid(), index, gpu or "none", threads or "default")  # fmt: skip
