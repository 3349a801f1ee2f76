"""Ready-made ``loss_fn(model, batch)`` callables for batches ``(x, y)``: lrprobe's one set of
loss definitions (the intake names them and checks them against the data).

All losses are means over the batch, as ``torch.nn.functional``'s defaults are; the user must
train with the same reduction for the recommended learning rates to apply unchanged.

- ``cross_entropy``: logits ``(B, C)`` (or ``(B, C, d…)``) against class indices ``(B,)``
  (``(B, d…)``).
- ``mse``: on float targets, outputs of the targets' shape (a trailing singleton dimension on
  either side is squeezed, so ``(B, 1)`` outputs fit ``(B,)`` targets and never broadcast to
  ``(B, B)``). On integer class labels the targets are one-hot vectors over the output's ``C``
  classes (regression on one-hot labels, as in "MSE for classification"); the mean is over all
  ``B·C`` entries.
- ``bce``: ``BCEWithLogits``; 0/1 labels or float targets in [0, 1] of the outputs' shape
  (squeezed as for ``mse``).
- ``lm_cross_entropy``: next-token logits ``(B, T, V)`` against token ids ``(B, T)``.

A model may return a tensor, an object with a ``logits`` tensor (Hugging Face outputs), or a
tuple whose first element is the tensor (nanoGPT returns ``(logits, loss)``). Outputs whose
shape does not fit the targets raise :class:`~lrprobe.worker.newton.errors.LossInputError`
(shapes only: no device synchronisation).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from lrprobe.worker.newton.errors import LossInputError
from lrprobe.worker.newton.summaries import LossFn


def cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    """Classification: logits (B, C, …) against class indices (B, …)."""
    x, y = batch
    logits = model_logits(model(x))
    check_class_logits(logits, y)
    return functional.cross_entropy(logits, y)


def mse(model: nn.Module, batch: Any) -> Tensor:
    """Regression: outputs against float targets of the same shape, or one-hot class labels."""
    x, y = batch
    output = model_logits(model(x))
    if y.is_floating_point():
        return functional.mse_loss(output, match_shape(y, output))
    check_class_logits(output, y)
    if output.ndim != 2:
        raise shape_error("mse on class labels needs outputs (B, C)", output, y)
    one_hot = functional.one_hot(y, num_classes=output.shape[1]).to(output.dtype)
    return functional.mse_loss(output, one_hot)


def bce(model: nn.Module, batch: Any) -> Tensor:
    """Binary or multi-label: logits against 0/1 (or [0, 1]) targets of the same shape."""
    x, y = batch
    logits = model_logits(model(x))
    target = match_shape(y, logits).to(logits.dtype)
    return functional.binary_cross_entropy_with_logits(logits, target)


def lm_cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    """Language modelling: logits (B, T, V) against next tokens (B, T)."""
    x, y = batch
    logits = model_logits(model(x))
    if logits.ndim != 3 or logits.shape[:2] != y.shape:
        raise shape_error("lm_cross_entropy needs logits (B, T, V)", logits, y)
    return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


# The losses by the names that job specs and the CLI use.
BY_NAME: dict[str, LossFn] = {
    "cross_entropy": cross_entropy,
    "mse": mse,
    "bce": bce,
    "lm_cross_entropy": lm_cross_entropy,
}


def model_logits(output: object) -> Tensor:
    """The tensor inside a model's output (tensor, ``.logits``, or first tuple element)."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise LossInputError(
        f"The model returned a {type(output).__name__}; it must return a tensor, an object with "
        "a .logits tensor, or a tuple whose first element is the output tensor."
    )


def check_class_logits(logits: Tensor, y: Tensor) -> None:
    """Logits ``(B, C, …)`` for labels ``(B, …)``."""
    if (
        logits.ndim != y.ndim + 1
        or logits.shape[0] != y.shape[0]
        or logits.shape[2:] != y.shape[1:]
    ):
        raise shape_error("class logits must be (B, C, ...) for labels (B, ...)", logits, y)


def match_shape(target: Tensor, output: Tensor) -> Tensor:
    """``target`` in the output's shape, where they differ only by trailing singletons."""
    if target.shape == output.shape:
        return target
    if target.numel() == output.numel() and _squeezed(target.shape) == _squeezed(output.shape):
        return target.reshape(output.shape)
    raise shape_error("outputs must have the targets' shape", output, target)


def _squeezed(shape: torch.Size) -> tuple[int, ...]:
    dims = list(shape)
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def shape_error(rule: str, output: Tensor, target: Tensor) -> LossInputError:
    """The error for an output that breaks ``rule``, naming both shapes."""
    return LossInputError(
        f"The model output has shape {tuple(output.shape)} and the targets {tuple(target.shape)}, "
        f"but {rule}; pick the loss that matches the model's head."
    )
