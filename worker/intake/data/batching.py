"""Deterministic batches for the probe, and train / held-out splits.

The probe (docs/method.md §7.1) takes a direction batch ``A_k`` and an independent summary
batch ``B_k`` for each ``k``, and checks its prediction on held-out batches. ``ProbeBatches``
serves full batches drawn without replacement: within one epoch no two batches share an
example, so consecutive draws (``A_1, B_1, A_2, B_2, …``) are disjoint as long as
``2·K ≤ batches_per_epoch``; after that a new epoch starts with a fresh permutation. Held-out
batches come from a separate ``ProbeBatches`` over the held-out part of ``holdout_split``, which
never shares an example with the training part.

Everything is a function of the seed: epoch ``e``'s permutation comes from a CPU
``torch.Generator`` seeded with a hash of ``(seed, e)``, so the same seed gives the same
batches bit for bit, in any process and on any device, and ``batch(i)`` can be recomputed out of
order. Batches are CPU tensors (the caller moves them); token batches are int64.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from lrprobe.worker.intake.data.dataset import Dataset
from lrprobe.worker.intake.errors import IntakeError

Batch = tuple[torch.Tensor, torch.Tensor]


def derive_seed(seed: int, *stream: str | int) -> int:
    """A 63-bit seed for the sub-stream ``stream`` of ``seed`` (stable across runs)."""
    text = ":".join(str(part) for part in (seed, *stream))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class ProbeBatches(Iterator[Batch]):
    """An endless, seeded stream of ``(x, y)`` batches of ``batch_size`` examples.

    Each epoch is one random permutation of the examples cut into
    ``num_examples // batch_size`` full batches; the remainder of the permutation is left out
    of that epoch (every batch has the same size, so summaries average evenly). ``next()``
    advances a cursor; ``batch(i)`` returns the ``i``-th batch of the stream without moving it.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise IntakeError("invalid_batch_size", "The batch size must be a positive integer.")
        if batch_size > dataset.num_examples:
            raise IntakeError(
                "invalid_batch_size",
                f"The batch size {batch_size} is larger than the {dataset.num_examples} examples "
                f"of {dataset.name}; use a batch size of at most {dataset.num_examples}.",
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = dataset.num_examples // batch_size
        self._position = 0
        self._epoch = -1
        self._permutation = torch.empty(0, dtype=torch.int64)

    @property
    def position(self) -> int:
        """How many batches ``next()`` has returned so far."""
        return self._position

    def __iter__(self) -> ProbeBatches:
        return self

    def __next__(self) -> Batch:
        batch = self.batch(self._position)
        self._position += 1
        return batch

    def take(self, count: int) -> list[Batch]:
        """The next ``count`` batches."""
        return [next(self) for _ in range(count)]

    def indices(self, index: int) -> torch.Tensor:
        """The example indices (int64, CPU) of the ``index``-th batch of the stream."""
        if index < 0:
            raise ValueError("batch index must be non-negative")
        epoch, slot = divmod(index, self.batches_per_epoch)
        start = slot * self.batch_size
        return self._epoch_permutation(epoch)[start : start + self.batch_size]

    def batch(self, index: int) -> Batch:
        """The ``index``-th batch of the stream (recomputed; does not move the cursor)."""
        rows = self.indices(index)
        x = self.dataset.x.index_select(0, rows)
        y = self.dataset.y.index_select(0, rows)
        if self.dataset.kind == "tokens":
            return x.to(torch.int64), y.to(torch.int64)
        return x, y

    def _epoch_permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._permutation = torch.randperm(
                self.dataset.num_examples, generator=generator, dtype=torch.int64
            )
            self._epoch = epoch
        return self._permutation


def holdout_split(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``dataset`` at random into ``(train, held_out)`` with no example in both.

    ``held_out`` gets ``round(fraction · N)`` examples (at least 1, and at least 1 is left for
    ``train``). For token data the examples are windows, so the two parts share at most the one
    boundary token between neighbouring windows. The split depends only on ``seed`` and ``N``.
    """
    count = dataset.num_examples
    if not 0.0 < fraction < 1.0:
        raise IntakeError(
            "invalid_holdout_fraction",
            f"The held-out fraction must lie strictly between 0 and 1, not {fraction}.",
        )
    if count < 2:
        raise IntakeError(
            "too_few_examples",
            f"{dataset.name} has {count} example, too few to hold any out; send more data.",
        )
    held = min(max(round(fraction * count), 1), count - 1)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(derive_seed(seed, "holdout"))
    permutation = torch.randperm(count, generator=generator, dtype=torch.int64)
    held_rows, _ = torch.sort(permutation[:held])
    train_rows, _ = torch.sort(permutation[held:])
    return dataset.subset(train_rows), dataset.subset(held_rows)
