"""A tiny digits MLP (the service's own ``mlp`` architecture) and the optimizer setup that real
training code uses: AdamW with weight decay on weights only and a linear warm-up."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import nn

from lrprobe.worker.intake.checkpoints.architectures.mlp import MLP, MLPConfig
from lrprobe.worker.intake.data.policy import DataPolicy
from lrprobe.worker.intake.data.references import open_dataset
from lrprobe.worker.newton import losses, minibatches

ARCH_CONFIG = {"sizes": [64, 32, 10], "activation": "tanh"}
DATA = "builtin://digits"
FAST_PROBE = {"steps": 8, "period": 2, "calibration_steps": 4}


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    dataset = open_dataset(DATA, DataPolicy())
    return dataset.x, dataset.y


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP(MLPConfig(**ARCH_CONFIG))


def decay_groups(model: nn.Module, decay: float = 0.05) -> list[dict]:
    named = list(model.named_parameters())
    return [
        {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": decay},
        {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
    ]


def warmup(optimizer: torch.optim.Optimizer, steps: int = 20) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / steps))


def batches(batch_size: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    x, y = digits()
    return minibatches(x, y, batch_size=batch_size, seed=3)


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    return losses.cross_entropy(model, batch)


def endless(batch_size: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return itertools.cycle(list(itertools.islice(batches(batch_size), 40)))


def check_rates(optimizer: torch.optim.Optimizer, model: nn.Module, lrs: dict[str, float],
                scheduler=None) -> None:  # fmt: skip
    """Each parameter's group holds its probe group's rate (times the schedule's multiplier)
    and the weight decay of its original group."""
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            layer = names[id(p)].rsplit(".", 1)[0]
            base = group.get("initial_lr", group["lr"])
            assert base == lrs[layer], names[id(p)]
            assert group["weight_decay"] == (0.05 if p.dim() >= 2 else 0.0)
    if scheduler is not None:
        assert scheduler.base_lrs == [g["initial_lr"] for g in optimizer.param_groups]
