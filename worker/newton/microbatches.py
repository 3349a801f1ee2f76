"""Splitting a probe batch into micro-batches, and retrying at half the size when memory runs out.

A batch's loss is a mean over its examples (every loss in :mod:`lrprobe.worker.newton.losses`
is), so its derivatives of any order are the example-weighted means of the micro-batches'
derivatives: gradient accumulation, and the summaries accumulated the same way, are exact up to
rounding. BatchNorm in train mode is the exception: its statistics are per micro-batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from lrprobe.worker.newton.errors import OutOfMemoryProbeError

T = TypeVar("T")

# How CPU allocators ("DefaultCPUAllocator: can't allocate memory") and CUDA word an allocation
# that failed, for errors raised as a plain RuntimeError.
_OUT_OF_MEMORY_MESSAGES = ("can't allocate memory", "out of memory", "cannot allocate memory")


def batch_size(batch: Any) -> int | None:
    """The leading dimension shared by the batch's tensors (None: no tensor to split)."""
    sizes = {int(t.shape[0]) for t in _tensors(batch) if t.dim() > 0}
    if len(sizes) > 1:
        raise ValueError(
            f"the batch's tensors have different leading sizes {sorted(sizes)}; micro-batches "
            "split every tensor along its first dimension"
        )
    return sizes.pop() if sizes else None


def split(batch: Any, size: int) -> list[tuple[Any, float]]:
    """``batch`` in micro-batches of at most ``size`` examples, each with its share of them."""
    total = batch_size(batch)
    if total is None or size >= total:
        return [(batch, 1.0)]
    starts = range(0, total, size)
    return [
        (_slice(batch, lo, min(lo + size, total)), (min(size, total - lo)) / total) for lo in starts
    ]


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(
        message in str(exc).lower() for message in _OUT_OF_MEMORY_MESSAGES
    )


def run_halving(
    batch: Any,
    micro_batch: int | None,
    work: Callable[[Sequence[tuple[Any, float]]], T],
    what: str,
) -> tuple[T, int | None]:
    """``work(micro-batches)``; when it runs out of memory, again at half the micro-batch.

    Returns the result and the micro-batch size that fitted (None: the whole batch), which the
    caller passes on so that later batches start there. ``work`` must start from a clean state
    each time it is called (no gradient left over from a failed attempt).

    Raises:
        OutOfMemoryProbeError: even one example at a time does not fit.
    """
    total = batch_size(batch)
    size = (
        micro_batch
        if micro_batch is not None and total is not None and micro_batch < total
        else None
    )
    while True:
        failed = False
        try:
            return work(split(batch, size) if size else [(batch, 1.0)]), size
        except Exception as exc:  # only memory errors are retried, the rest go on up
            if not is_out_of_memory(exc):
                raise
            failed = True
        # Outside the except block, so that the failed attempt's frames and tensors are freed.
        if failed:
            current = size or total
            if current is None or current <= 1:
                raise OutOfMemoryProbeError(
                    f"{what} ran out of memory even one example at a time; use a device with "
                    "more memory, shorter sequences (block size) or a smaller model"
                )
            size = math.ceil(current / 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _tensors(batch: Any) -> list[Tensor]:
    if isinstance(batch, Tensor):
        return [batch]
    if isinstance(batch, tuple | list):
        return [t for item in batch for t in _tensors(item)]
    if isinstance(batch, dict):
        return [t for item in batch.values() for t in _tensors(item)]
    return []


def _slice(batch: Any, lo: int, hi: int) -> Any:
    if isinstance(batch, Tensor):
        return batch[lo:hi] if batch.dim() > 0 else batch
    if isinstance(batch, tuple | list):
        return type(batch)(_slice(item, lo, hi) for item in batch)
    if isinstance(batch, dict):
        return {key: _slice(value, lo, hi) for key, value in batch.items()}
    return batch


def accumulated_backward(
    loss_fn: Callable[[Any, Any], Tensor],
    model: Any,
    batch: Any,
    params: Sequence[Tensor],
    micro_batch: int | None,
    check: Callable[[Tensor], None] | None = None,
) -> tuple[Tensor, int | None]:
    """``loss.backward()`` over micro-batches, each micro-batch's loss weighted by its share of
    the examples, so that ``.grad`` is the whole batch's (gradient accumulation); ``.grad`` of
    ``params`` is cleared first. ``check`` sees each micro-batch's loss before its backward.

    Returns the batch's loss (detached) and the micro-batch size that fitted in memory.
    """

    def work(chunks: Sequence[tuple[Any, float]]) -> Tensor:
        for p in params:
            p.grad = None
        total: Tensor | None = None
        for chunk, weight in chunks:
            loss = loss_fn(model, chunk)
            if check is not None:
                check(loss)
            if not bool(torch.isfinite(loss.detach())):
                return loss.detach()  # the caller stops the run; no gradient is needed
            torch.autograd.backward(loss * weight if weight != 1.0 else loss)
            part = loss.detach() * weight
            total = part if total is None else total + part
        return total if total is not None else torch.zeros(())

    return run_halving(batch, micro_batch, work, "a training step")
