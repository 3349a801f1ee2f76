"""Named losses: ``loss_fn(model, (x, y)) -> scalar``, with early checks against the data.

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

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional

from lrprobe.worker.intake.data.dataset import Dataset
from lrprobe.worker.intake.errors import IntakeError

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]

LOSSES = ("cross_entropy", "mse", "bce", "lm_cross_entropy")
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
    loss = _LOSS_FNS.get(name)
    if loss is None:
        raise IntakeError(
            "unknown_loss", f"There is no loss {name!r}; use one of {', '.join(LOSSES)}."
        )
    return loss


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
    _CHECKS[name](logits, example_targets, dataset)


def model_logits(output: object) -> torch.Tensor:
    """The tensor inside a model's output (tensor, ``.logits``, or first tuple element)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise IntakeError(
        "incompatible_model_output",
        f"The model returned a {type(output).__name__}; it must return a tensor, an object with "
        "a .logits tensor, or a tuple whose first element is the output tensor.",
    )


# --- the losses -----------------------------------------------------------------------------


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    logits = model_logits(model(x))
    _check_class_logits(logits, y)
    return functional.cross_entropy(logits, y)


def mse(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    output = model_logits(model(x))
    if y.is_floating_point():
        return functional.mse_loss(output, _match_shape(y, output))
    _check_class_logits(output, y)
    if output.ndim != 2:
        raise _shape_error("mse on class labels needs outputs (B, C)", output, y)
    one_hot = functional.one_hot(y, num_classes=output.shape[1]).to(output.dtype)
    return functional.mse_loss(output, one_hot)


def bce(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    logits = model_logits(model(x))
    target = _match_shape(y, logits).to(logits.dtype)
    return functional.binary_cross_entropy_with_logits(logits, target)


def lm_cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    logits = model_logits(model(x))
    if logits.ndim != 3 or logits.shape[:2] != y.shape:
        raise _shape_error("lm_cross_entropy needs logits (B, T, V)", logits, y)
    return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


_LOSS_FNS: dict[str, LossFn] = {
    "cross_entropy": cross_entropy,
    "mse": mse,
    "bce": bce,
    "lm_cross_entropy": lm_cross_entropy,
}


# --- shape checks (no device synchronisation: they look at shapes only) ----------------------


def _check_class_logits(logits: torch.Tensor, y: torch.Tensor) -> None:
    if (
        logits.ndim != y.ndim + 1
        or logits.shape[0] != y.shape[0]
        or logits.shape[2:] != y.shape[1:]
    ):
        raise _shape_error("class logits must be (B, C, ...) for labels (B, ...)", logits, y)


def _match_shape(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    if target.shape == output.shape:
        return target
    if target.numel() == output.numel() and _squeezed(target.shape) == _squeezed(output.shape):
        return target.reshape(output.shape)
    raise _shape_error("outputs must have the targets' shape", output, target)


def _squeezed(shape: torch.Size) -> tuple[int, ...]:
    dims = list(shape)
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def _shape_error(rule: str, output: torch.Tensor, target: torch.Tensor) -> IntakeError:
    return IntakeError(
        "incompatible_model_output",
        f"The model output has shape {tuple(output.shape)} and the targets {tuple(target.shape)}, "
        f"but {rule}; pick the loss that matches the model's head.",
    )


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
