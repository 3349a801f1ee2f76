"""Named losses: ``loss_fn(model, (x, y)) -> scalar``, with early checks against the data.

The losses are the numeric core's (:mod:`lrprobe.worker.newton.losses`); here they are named,
checked against the data and the model's output, and their refusals become ``IntakeError``.

All losses are means over the batch, as ``torch.nn.functional``'s defaults are; the user must
train with the same reduction for the recommended learning rates to apply unchanged.

- ``cross_entropy``: logits ``(B, C)`` (or ``(B, C, d…)``) against class indices ``(B,)``
  (``(B, d…)``); needs ``C ≥ num_classes``.
- ``mse``: on regression data, outputs of the targets' shape (a trailing singleton dimension on
  either side is squeezed, so ``(B, 1)`` outputs fit ``(B,)`` targets and never broadcast to
  ``(B, B)``). On classification data the targets are one-hot vectors over the output's ``C``
  classes (regression on one-hot labels, as in "MSE for classification"); the mean is over all
  ``B·C`` entries.
- ``bce``: ``BCEWithLogits``; binary labels (a classification set with at most 2 classes) against
  logits ``(B,)`` or ``(B, 1)``, or float targets in [0, 1] of the outputs' shape (multi-label
  or soft targets: open such data with ``task=regression``).
- ``lm_cross_entropy``: next-token logits ``(B, T, V)`` against token ids ``(B, T)``; needs
  ``V ≥ vocabulary size``.

A model may return a tensor, an object with a ``logits`` tensor (Hugging Face outputs), or a
tuple whose first element is the tensor (nanoGPT returns ``(logits, loss)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps

import torch
from torch import nn

from lrprobe.worker.intake.dataset import Dataset
from lrprobe.worker.intake.errors import IntakeError
from lrprobe.worker.newton import losses as _core
from lrprobe.worker.newton.errors import LossInputError
from lrprobe.worker.newton.losses import check_class_logits as _check_class_logits
from lrprobe.worker.newton.losses import match_shape as _match_shape
from lrprobe.worker.newton.losses import shape_error as _shape_error

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]

LOSSES = tuple(_core.BY_NAME)
_SUITS = {
    "cross_entropy": ("classification",),
    "mse": ("regression", "classification"),
    "bce": ("classification", "regression"),
    "lm_cross_entropy": ("tokens",),
}
_INSTEAD = {
    "classification": "cross_entropy (or mse, bce)",
    "regression": "mse",
    "tokens": "lm_cross_entropy",
}


def get_loss(name: str) -> LossFn:
    """The loss function called ``name`` (one of ``LOSSES``)."""
    loss = _core.BY_NAME.get(name)
    if loss is None:
        raise IntakeError(
            "unknown_loss", f"There is no loss {name!r}; use one of {', '.join(LOSSES)}."
        )
    return _refusing(loss)


def check_loss(name: str, dataset: Dataset, output: object | None = None) -> None:
    """Refuse a loss that cannot apply to ``dataset`` (and to ``output``, when given).

    ``output``: what the model returns for a batch of this dataset (any batch size); with it the
    output's shape is checked against the targets and the number of classes, so that a bad
    pairing fails here with a message instead of deep in the probe (or, on a GPU, as a
    device-side assert from an out-of-range class index).
    """
    get_loss(name)
    if dataset.kind not in _SUITS[name]:
        raise IntakeError(
            "incompatible_loss",
            f"The loss {name} does not fit {dataset.kind} data ({dataset.name}); use "
            f"{_INSTEAD[dataset.kind]}.",
        )
    if name == "bce":
        _check_bce_targets(dataset)
    if output is None:
        return
    logits = model_logits(output)
    batch = int(logits.shape[0]) if logits.ndim else 0
    example_targets = dataset.y[: max(batch, 1)]
    if batch == 0 or example_targets.shape[0] != batch:
        raise IntakeError(
            "incompatible_model_output",
            f"The model output has shape {tuple(logits.shape)}; it needs one row per example.",
        )
    with _refusals():
        _CHECKS[name](logits, example_targets, dataset)


def model_logits(output: object) -> torch.Tensor:
    """The tensor inside a model's output (tensor, ``.logits``, or first tuple element)."""
    with _refusals():
        return _core.model_logits(output)


@contextmanager
def _refusals() -> Iterator[None]:
    """The core's loss refusals as the intake's error, with the same code and sentence."""
    try:
        yield
    except LossInputError as exc:
        raise IntakeError(exc.code, exc.message) from None


def _refusing(loss: LossFn) -> LossFn:
    @wraps(loss)
    def refusing(model: nn.Module, batch: Batch) -> torch.Tensor:
        with _refusals():
            return loss(model, batch)

    return refusing


def _check_bce_targets(dataset: Dataset) -> None:
    if dataset.kind == "classification":
        if (dataset.num_classes or 0) > 2 or dataset.y.ndim != 1:
            raise IntakeError(
                "incompatible_loss",
                f"bce needs binary labels, but {dataset.name} has {dataset.num_classes} classes; "
                "use cross_entropy, or send multi-hot float targets opened with task=regression.",
            )
        return
    low, high = float(dataset.y.min()), float(dataset.y.max())
    if low < 0.0 or high > 1.0:
        raise IntakeError(
            "incompatible_loss",
            f"bce needs targets in [0, 1], but {dataset.name} has targets in [{low:g}, {high:g}]; "
            "use mse for unbounded targets.",
        )


def _check_classes(logits: torch.Tensor, y: torch.Tensor, dataset: Dataset) -> None:
    _check_class_logits(logits, y)
    classes = int(logits.shape[1])
    if dataset.num_classes is not None and classes < dataset.num_classes:
        raise IntakeError(
            "incompatible_model_output",
            f"The model scores {classes} classes but {dataset.name} has {dataset.num_classes}; "
            "use a model whose head matches the data.",
        )


def _check_mse(output: torch.Tensor, y: torch.Tensor, dataset: Dataset) -> None:
    if dataset.kind == "classification":
        _check_classes(output, y, dataset)
    else:
        _match_shape(y, output)


def _check_bce(output: torch.Tensor, y: torch.Tensor, dataset: Dataset) -> None:
    _match_shape(y, output)


def _check_lm(logits: torch.Tensor, y: torch.Tensor, dataset: Dataset) -> None:
    if logits.ndim != 3 or logits.shape[:2] != y.shape:
        raise _shape_error("lm_cross_entropy needs logits (B, T, V)", logits, y)
    vocab = int(logits.shape[-1])
    if dataset.num_classes is not None and vocab < dataset.num_classes:
        raise IntakeError(
            "incompatible_model_output",
            f"The model's vocabulary has {vocab} tokens but {dataset.name} uses ids up to "
            f"{dataset.num_classes - 1}; use the tokenizer the model was trained with.",
        )


_CHECKS: dict[str, Callable[[torch.Tensor, torch.Tensor, Dataset], None]] = {
    "cross_entropy": _check_classes,
    "mse": _check_mse,
    "bce": _check_bce,
    "lm_cross_entropy": _check_lm,
}
