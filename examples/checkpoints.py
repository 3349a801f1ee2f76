"""Write the example checkpoints and data that the README's ``lrprobe probe`` commands use.

    python examples/checkpoints.py ./examples-out

creates, in that folder (weights are freshly initialised, seeded, so the commands are
reproducible; a probe of an untrained model is what you would run before training):

- ``mlp.safetensors``: MLP 30-64-64-2 for ``builtin://breast_cancer``;
- ``cnn.safetensors``: two conv blocks for ``builtin://digits?shape=image`` (1x8x8 images);
- ``resnet.safetensors``: CIFAR-style ResNet-8 (width 8, BatchNorm) for the same images;
- ``gpt.safetensors`` and ``tokens.npy``: a byte-level GPT and a token stream made from the
  bytes of a Python standard-library source file (real text, ids 0-255);
- ``custom.pt2``: a custom 1-D conv net (not a built-in architecture) exported with
  ``torch.export`` for ``builtin://mnist1d?shape=channels`` (1x40 signals), with a dynamic
  batch dimension so any batch size works.

The architecture name and config travel in the safetensors metadata, so no ``--arch`` is needed.
"""

from __future__ import annotations

import argparse
import difflib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lrprobe.worker.intake.checkpoints.architectures import get_architecture
from lrprobe.worker.intake.checkpoints.loading import save_checkpoint

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mlp": {"sizes": [30, 64, 64, 2], "activation": "tanh"},
    "cnn": {"in_channels": 1, "image_size": 8, "channels": [16, 32], "num_classes": 10},
    "resnet": {"depth": 8, "width": 8, "in_channels": 1, "num_classes": 10},
    "gpt": {"vocab_size": 256, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
}


class Custom1D(nn.Module):
    """A model no registry knows: conv + BatchNorm feature extractor and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2, stride=2)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.conv2(h))
        return self.head(h.mean(dim=2))


def write_builtin(name: str, out: Path) -> Path:
    torch.manual_seed(0)
    spec = get_architecture(name)
    config = spec.validate_config(ARCHITECTURES[name])
    path = out / f"{name}.safetensors"
    save_checkpoint(spec.build(config), path, name, config)
    return path


def write_tokens(out: Path, limit: int = 60_000) -> Path:
    """Byte ids of ``difflib.py`` (stdlib source): real text for a byte-level GPT."""
    text = Path(difflib.__file__).read_bytes()[:limit]
    path = out / "tokens.npy"
    np.save(path, np.frombuffer(text, dtype=np.uint8).astype(np.int64))
    return path


def write_pt2(out: Path) -> Path:
    torch.manual_seed(0)
    model = Custom1D().train()  # train mode: the probe trains it (BatchNorm batch statistics)
    batch = torch.export.Dim("batch", min=2, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation notices while tracing
        program = torch.export.export(model, (torch.randn(8, 1, 40),), dynamic_shapes=({0: batch},))
    path = out / "custom.pt2"
    torch.export.save(program, path)
    return path


def write_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_builtin(name, out) for name in ARCHITECTURES]
    return [*paths, write_tokens(out), write_pt2(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", type=Path, help="folder to write into (created if missing)")
    args = parser.parse_args()
    for path in write_all(args.out):
        print(path)


if __name__ == "__main__":
    main()
