"""Normalisation layers as primitive ops, for exact third derivatives.

In torch 2.13 the fused ``layer_norm``, train-mode ``batch_norm`` and ``instance_norm`` kernels
have correct first and second derivatives but wrong third ones: their double-backward formulas
treat the saved mean and inverse standard deviation as constants (pytorch/pytorch#175754,
#186256). Measured on a small float64 model against central differences of the exact H̄_ss:
LayerNorm 85.7 vs 68.6, train-mode BatchNorm −160.0 vs −165.8 (group_norm, rms_norm and
eval-mode batch_norm agree to 1e-7). Composing the same maths from primitive ops gives autograd
a graph it differentiates correctly to any order, at a modest cost in time and memory, so
:func:`summaries` uses it whenever it takes third derivatives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    dims = tuple(range(-len(normalized_shape), 0))
    return _affine(_standardise(input, dims, eps), weight, bias, shape=None)


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    shape = (1, -1) + (1,) * (input.dim() - 2)
    if training or running_mean is None or running_var is None:
        dims = (0, *range(2, input.dim()))
        out = _standardise(input, dims, eps)
        if training and running_mean is not None and running_var is not None:
            _update_running(input, dims, running_mean, running_var, momentum)
    else:
        out = (input - running_mean.reshape(shape)) * torch.rsqrt(running_var.reshape(shape) + eps)
    return _affine(out, weight, bias, shape)


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    shape = (1, -1) + (1,) * (input.dim() - 2)
    if use_input_stats or running_mean is None or running_var is None:
        out = _standardise(input, tuple(range(2, input.dim())), eps)
    else:
        out = (input - running_mean.reshape(shape)) * torch.rsqrt(running_var.reshape(shape) + eps)
    return _affine(out, weight, bias, shape)


def _standardise(input: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    centred = input - input.mean(dim=dims, keepdim=True)
    return centred * torch.rsqrt(centred.square().mean(dim=dims, keepdim=True) + eps)


def _affine(
    out: Tensor, weight: Tensor | None, bias: Tensor | None, shape: tuple[int, ...] | None
) -> Tensor:
    if weight is not None:
        out = out * (weight if shape is None else weight.reshape(shape))
    if bias is not None:
        out = out + (bias if shape is None else bias.reshape(shape))
    return out


def _update_running(
    input: Tensor, dims: tuple[int, ...], mean: Tensor, var: Tensor, momentum: float | None
) -> None:
    """What the fused kernel does to the buffers (unbiased variance), so the forward is faithful."""
    factor = 0.1 if momentum is None else momentum
    with torch.no_grad():
        x = input.detach()
        count = x.numel() // x.shape[1]
        batch_var = x.var(dim=dims, unbiased=count > 1)
        mean.mul_(1 - factor).add_(factor * x.mean(dim=dims))
        var.mul_(1 - factor).add_(factor * batch_var)


_REPLACEMENTS: dict[Callable[..., Any], Callable[..., Tensor]] = {
    F.layer_norm: layer_norm,
    F.batch_norm: batch_norm,
    F.instance_norm: instance_norm,
}


class PrimitiveNorms(TorchFunctionMode):
    """Within this mode, ``F.layer_norm``/``F.batch_norm``/``F.instance_norm`` run as primitive
    ops (what ``nn.LayerNorm``, ``nn.BatchNorm*d`` and ``nn.InstanceNorm*d`` call)."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        replacement = _REPLACEMENTS.get(func)
        return (replacement or func)(*args, **(kwargs or {}))
