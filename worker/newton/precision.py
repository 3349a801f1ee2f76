"""Derivatives in float32 for models that train in bfloat16 or float16, or under autocast.

The summaries are differences of large, nearly cancelling sums (H̄ sums every curvature entry
along u), and bfloat16 keeps 8 bits of mantissa: derivative passes in the model's own half
precision lose the answer (tests/newton/test_precision.py measures it against float64). Inside
:func:`float32_derivatives` half-precision parameters and floating buffers are float32, autocast
is off, and TF32 is off for matmuls and convolutions (TF32 keeps 10 bits of mantissa).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

Precision = Literal["float32", "model"]
PRECISIONS = ("float32", "model")
HALF = (torch.float16, torch.bfloat16)


def has_half(model: nn.Module) -> bool:
    """Whether any parameter or buffer of ``model`` is bfloat16 or float16."""
    return any(t.dtype in HALF for t in (*model.parameters(), *model.buffers()))


@contextmanager
def float32_derivatives(model: nn.Module) -> Iterator[None]:
    """Half-precision parameters and buffers of ``model`` hold float32 values inside; on exit
    they hold their original tensors again (the same storage, so bit for bit). Autocast and TF32
    are off inside, and put back as they were.

    The float32 values are one more copy of the half-precision tensors only (2 bytes → 4 bytes
    per element); models already in float32 or float64 are not copied at all.
    """
    swapped: list[tuple[Tensor, Tensor]] = []
    try:
        with torch.no_grad():
            for tensor in (*model.parameters(), *model.buffers()):
                if tensor.dtype in HALF:
                    original = tensor.data
                    swapped.append((tensor, original))
                    tensor.data = original.float()
        with ExitStack() as stack:
            for device_type in _device_types(model):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            stack.enter_context(_no_tf32())
            yield
    finally:
        for tensor, original in reversed(swapped):
            tensor.data = original


def upcast(batch: Any) -> Any:
    """``batch`` with its half-precision floating tensors as float32 (tuples, lists, dicts)."""
    if isinstance(batch, Tensor):
        return batch.float() if batch.dtype in HALF else batch
    if isinstance(batch, tuple | list):
        return type(batch)(upcast(item) for item in batch)
    if isinstance(batch, dict):
        return {key: upcast(value) for key, value in batch.items()}
    return batch


def _device_types(model: nn.Module) -> list[str]:
    return sorted({"cpu"} | {t.device.type for t in model.parameters()} & {"cuda"})


# The per-backend switches of torch ≥ 2.9. Only this API is used: reading the legacy
# ``allow_tf32`` flags after the new ones were set raises, so the legacy flags are never touched.
def _precision_switches() -> list[Any]:
    backends = torch.backends
    # cudnn's and mkldnn's switches are set up at import and missing from torch's stubs.
    candidates = [
        backends.cuda.matmul,
        getattr(backends.cudnn, "conv", None),
        getattr(backends.cudnn, "rnn", None),
        getattr(backends.mkldnn, "matmul", None),
        getattr(backends.mkldnn, "conv", None),
        getattr(backends.mkldnn, "rnn", None),
    ]
    return [switch for switch in candidates if hasattr(switch, "fp32_precision")]


@contextmanager
def _no_tf32() -> Iterator[None]:
    switches = _precision_switches()
    saved = [switch.fp32_precision for switch in switches]
    try:
        for switch in switches:
            switch.fp32_precision = "ieee"
        yield
    finally:
        for switch, value in zip(switches, saved, strict=True):
            switch.fp32_precision = value
