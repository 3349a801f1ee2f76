"""Running a user's model without leaving a trace on it.

A probe evaluates the loss many times, at the checkpoint and at trial steps. Each forward of a
train-mode BatchNorm updates its running statistics and each Dropout draws from the global RNG;
the user's model and RNG streams must come out exactly as they went in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn


def _devices(model: nn.Module) -> list[int]:
    return sorted(
        {t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"}
        | {t.device.index or 0 for t in model.buffers() if t.device.type == "cuda"}
    )


@contextmanager
def preserved(model: nn.Module, seed: int | None = None) -> Iterator[None]:
    """Restore buffers (bit for bit) and the CPU/CUDA RNG states on exit.

    With ``seed``, the RNG is seeded on entry so that stochastic layers (dropout) draw the same
    masks every time the same batch is evaluated: the loss is then one deterministic function of
    the parameters, which the Taylor analysis needs.
    """
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    with torch.random.fork_rng(devices=_devices(model)):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    if name in saved:
                        b.copy_(saved[name])


@contextmanager
def shifted(params: Mapping[str, torch.Tensor], step: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily set ``p ← p − step[name]`` in place; the exact old values come back on exit."""
    saved = {name: params[name].detach().clone() for name in step}
    try:
        with torch.no_grad():
            for name, delta in step.items():
                params[name].sub_(delta)
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


@contextmanager
def scratch(model: nn.Module) -> Iterator[nn.Module]:
    """Yield ``model`` itself to be trained on; on exit its parameters, buffers and ``.grad``
    are exactly what they were.

    Training the model in place, with its checkpoint saved in host memory, replaces a deep copy:
    on a GPU the device then holds one copy of the model, not two (README, "Large models").
    ``.grad`` tensors are set aside, not copied, and come back as the same objects.
    """
    params = dict(model.named_parameters())
    saved = {name: p.detach().to("cpu", copy=True) for name, p in params.items()}
    buffers = {name: b.detach().to("cpu", copy=True) for name, b in model.named_buffers()}
    grads = {name: p.grad for name, p in params.items()}
    try:
        for p in params.values():
            p.grad = None
        yield model
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])
                p.grad = grads[name]
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
