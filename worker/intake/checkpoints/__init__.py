"""Checkpoints into modules, never running the user's code: format detection and the
safetensors / ``torch.save`` / Hugging Face / ``torch.export`` loaders (``loading``, ``hf``,
``pt2``) and the registry of built-in architectures (``architectures``). The torch-free checks
they share with the service live in :mod:`lrprobe.rules`."""

from __future__ import annotations

from lrprobe.worker.intake.checkpoints.loading import (
    DEFAULT_MAX_BYTES,
    CheckpointFormat,
    LoadedModel,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "CheckpointFormat",
    "LoadedModel",
    "load_checkpoint",
    "save_checkpoint",
]
