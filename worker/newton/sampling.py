"""Minibatches for a probe when the data is already in memory."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def minibatches(*tensors: Tensor, batch_size: int, seed: int = 0) -> Iterator[tuple[Tensor, ...]]:
    """Endless shuffled minibatches, without replacement within each pass over the data.

    Deterministic for a given seed; the last incomplete batch of a pass is dropped so that every
    batch has the same size (summaries from a smaller batch would be noisier).
    """
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError("all tensors must have the same number of examples")
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be in 1..{n}, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            index = order[start : start + batch_size].to(tensors[0].device)
            yield tuple(t[index] for t in tensors)
