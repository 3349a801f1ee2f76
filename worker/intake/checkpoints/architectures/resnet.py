"""CIFAR-style ResNets with BatchNorm: ResNet-(6n+2) in three stages, and ResNet-18.

Both use a 3x3 stem without max-pool (the CIFAR variant) and BasicBlocks. Where a block changes
width or stride its shortcut is a 1x1 convolution with BatchNorm (option B of He et al. 2016),
also for the 6n+2 family, whose paper variant pads with zeros instead.
"""

from __future__ import annotations

from typing import Self

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn
from torch.nn import functional as F

from lrprobe.worker.intake.checkpoints.architectures._registry import ArchitectureSpec


class ResNetConfig(BaseModel):
    """``depth`` 18 is ResNet-18 (4 stages of 2 blocks); 6n+2 (20, 32, 44, 56, 110) has 3 stages
    of n blocks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    depth: PositiveInt = Field(default=20, description="18, or 6n+2 such as 20, 32, 44, 56, 110.")
    width: PositiveInt | None = Field(
        default=None,
        description="Channels of the first stage, doubled per stage; 16 for 6n+2, 64 for 18.",
    )
    num_classes: PositiveInt = Field(default=10, description="Number of output logits.")
    in_channels: PositiveInt = Field(default=3, description="Channels of the input images.")

    @model_validator(mode="after")
    def _check_depth(self) -> Self:
        if self.depth != 18 and (self.depth < 8 or (self.depth - 2) % 6 != 0):
            raise ValueError(f"depth {self.depth} is neither 18 nor 6n+2 (20, 32, 44, 56, 110)")
        return self

    @property
    def stages(self) -> tuple[int, ...]:
        """Blocks per stage."""
        return (2, 2, 2, 2) if self.depth == 18 else (((self.depth - 2) // 6),) * 3

    @property
    def base_width(self) -> int:
        if self.width is not None:
            return self.width
        return 64 if self.depth == 18 else 16


class BasicBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or n_in != n_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(n_in, n_out, 1, stride=stride, bias=False), nn.BatchNorm2d(n_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """``conv1``/``bn1`` stem, ``layer1``..``layerN`` stages, global average pool, ``fc``."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        width = config.base_width
        self.conv1 = nn.Conv2d(config.in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        n_in = width
        for stage, n_blocks in enumerate(config.stages):
            n_out = width * 2**stage
            blocks = [
                BasicBlock(n_in if i == 0 else n_out, n_out, 2 if (i == 0 and stage > 0) else 1)
                for i in range(n_blocks)
            ]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            n_in = n_out
        self.n_stages = len(config.stages)
        self.fc = nn.Linear(n_in, config.num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in range(self.n_stages):
            x = getattr(self, f"layer{stage + 1}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


RESNET_SPEC = ArchitectureSpec(
    name="resnet",
    config_model=ResNetConfig,
    factory=ResNet,
    description="CIFAR-style ResNet with BatchNorm: ResNet-20/32/44/56/110 or ResNet-18.",
)
