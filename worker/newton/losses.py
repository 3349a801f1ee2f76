"""Ready-made ``loss_fn(model, batch)`` callables for batches ``(x, y)``."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn


def cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    """Classification: logits (B, C) against class indices (B,)."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def mse(model: nn.Module, batch: Any) -> Tensor:
    """Regression: outputs against targets of the same shape (a (B,) target matches (B, 1))."""
    x, y = batch
    out = model(x)
    return F.mse_loss(out.reshape(y.shape) if out.numel() == y.numel() else out, y)


def bce(model: nn.Module, batch: Any) -> Tensor:
    """Binary or multi-label: logits against 0/1 targets of the same shape."""
    x, y = batch
    out = model(x)
    return F.binary_cross_entropy_with_logits(out.reshape(y.shape), y.to(out.dtype))


def lm_cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    """Language modelling: logits (B, T, V) against next tokens (B, T)."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
