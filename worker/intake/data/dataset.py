"""The validated, in-memory dataset a probe draws its batches from."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from lrprobe.worker.intake.errors import IntakeError

DatasetKind = Literal["classification", "regression", "tokens"]

MIN_EXAMPLES = 2


@dataclass(frozen=True, eq=False)
class Dataset:
    """Examples ``x[i]`` with targets ``y[i]``, checked once when the data was opened.

    ``kind``:
      - ``"classification"``: ``y`` is int64 class indices in ``[0, num_classes)``, shape ``(N,)``
        (or ``(N, ...)`` for dense per-position labels).
      - ``"regression"``: ``y`` is floating, shape ``(N,)`` or ``(N, ...)``; ``num_classes`` is
        ``None``.
      - ``"tokens"``: a token stream cut into ``N`` consecutive windows of ``block_size + 1``
        tokens; ``x[i]`` is a window's first ``block_size`` tokens and ``y[i]`` the same window
        shifted by one (the next tokens). Both are views into the one stream (int32 or int64);
        ``num_classes`` is the vocabulary size. Batches come out as int64.

    ``x`` is floating for tabular, image and signal data; integer features (e.g. token ids fed to
    an embedding) are kept as integers. Every floating value is finite.
    """

    name: str
    kind: DatasetKind
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    block_size: int | None = None

    @property
    def num_examples(self) -> int:
        return int(self.x.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example's input, e.g. ``(64,)``, ``(1, 8, 8)``, ``(block_size,)``."""
        return tuple(self.x.shape[1:])

    @property
    def target_shape(self) -> tuple[int, ...]:
        return tuple(self.y.shape[1:])

    def subset(self, indices: torch.Tensor) -> Dataset:
        """The examples at ``indices`` (a 1-D int64 tensor), in that order."""
        return replace(self, x=self.x[indices], y=self.y[indices])


def build_dataset(
    name: str,
    kind: DatasetKind,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int | None = None,
    class_names: tuple[str, ...] | None = None,
    block_size: int | None = None,
    min_examples: int = MIN_EXAMPLES,
) -> Dataset:
    """Check ``x`` and ``y`` and wrap them; every problem is an ``IntakeError``.

    ``num_classes``: for classification and tokens, the declared number of classes (vocabulary
    size); ``None`` infers ``max(y) + 1``.
    """
    if x.ndim == 0 or y.ndim == 0:
        raise IntakeError(
            "invalid_data", f"{name}: x and y must be arrays with one row per example."
        )
    if x.shape[0] != y.shape[0]:
        raise IntakeError(
            "invalid_data",
            f"{name}: x has {x.shape[0]} examples but y has {y.shape[0]}; give one target per "
            "example.",
        )
    if x.shape[0] < min_examples:
        raise IntakeError(
            "too_few_examples",
            f"{name}: has {x.shape[0]} examples, fewer than the {min_examples} a probe needs; "
            "send more data.",
        )
    x = _checked_tensor(x, name, "x")
    y = _checked_tensor(y, name, "y")
    if kind == "regression":
        if not y.is_floating_point():
            y = y.to(torch.float32)
        return Dataset(name, kind, x, y)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise IntakeError(
            "invalid_data",
            f"{name}: {kind} targets must be integer class indices, not {y.dtype}; save them as "
            "integers (or ask for task=regression).",
        )
    if kind == "tokens":
        if x.is_floating_point():
            raise IntakeError("invalid_data", f"{name}: token ids must be integers.")
        extremes = torch.stack([x.min(), x.max(), y.min().to(x.dtype), y.max().to(x.dtype)])
        num_classes = _checked_labels(extremes, name, num_classes, "token id")
    else:
        num_classes = _checked_labels(y, name, num_classes, "label")
    if kind == "classification":
        y = y.to(torch.int64)
    return Dataset(name, kind, x, y, num_classes, class_names, block_size)


def _checked_tensor(t: torch.Tensor, name: str, which: str) -> torch.Tensor:
    if t.is_complex() or t.is_quantized or t.layout != torch.strided:
        raise IntakeError(
            "invalid_data",
            f"{name}: {which} has dtype {t.dtype} and layout {t.layout}; send dense real-valued "
            "or integer arrays.",
        )
    if t.dtype == torch.bool:
        return t.to(torch.float32) if which == "x" else t.to(torch.int64)
    if t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            first = int(bad.reshape(t.shape[0], -1).any(dim=1).nonzero()[0, 0])
            raise IntakeError(
                "non_finite_data",
                f"{name}: {which} has {int(bad.sum())} NaN or infinite values (first in example "
                f"{first}); drop or fill them before sending the data.",
            )
    return t


def _checked_labels(y: torch.Tensor, name: str, declared: int | None, what: str) -> int:
    low = int(y.min())
    high = int(y.max())
    if low < 0:
        raise IntakeError(
            "invalid_data",
            f"{name}: has a negative {what} ({low}); {what}s must be 0, 1, 2, ...",
        )
    if declared is None:
        return high + 1
    if declared < 1:
        raise IntakeError("invalid_data_ref", f"{name}: the number of classes must be positive.")
    if high >= declared:
        raise IntakeError(
            "invalid_data",
            f"{name}: has {what} {high}, outside the declared range [0, {declared}); fix the "
            "data or the declared number of classes.",
        )
    return declared
