"""A small convolutional classifier for images: conv blocks, then one Linear layer."""

from __future__ import annotations

from typing import Self

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn

from lrprobe.worker.intake.checkpoints.architectures._registry import ArchitectureSpec


class CNNConfig(BaseModel):
    """Each entry of ``channels`` is a conv block that halves the image (max-pool 2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_channels: PositiveInt = Field(default=1, description="Channels of the input images.")
    image_size: PositiveInt = Field(default=28, description="Height and width of the input.")
    channels: tuple[PositiveInt, ...] = Field(
        default=(16, 32), min_length=1, description="Output channels of each conv block."
    )
    num_classes: PositiveInt = Field(default=10, description="Number of output logits.")
    kernel_size: PositiveInt = Field(default=3, description="Odd conv kernel size ('same').")
    batch_norm: bool = Field(default=False, description="BatchNorm after each convolution.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout before the head.")

    @model_validator(mode="after")
    def _check_shapes(self) -> Self:
        if self.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd so that convolutions keep the image size")
        if self.image_size >> len(self.channels) < 1:
            raise ValueError(
                f"image_size {self.image_size} is too small for {len(self.channels)} conv "
                "blocks that each halve it"
            )
        return self


class CNN(nn.Module):
    """``features`` holds the conv blocks, ``classifier`` the flatten/dropout/Linear head."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        n_in = config.in_channels
        for n_out in config.channels:
            blocks.append(
                nn.Conv2d(
                    n_in,
                    n_out,
                    config.kernel_size,
                    padding=config.kernel_size // 2,
                    bias=not config.batch_norm,
                )
            )
            if config.batch_norm:
                blocks.append(nn.BatchNorm2d(n_out))
            blocks += [nn.ReLU(), nn.MaxPool2d(2)]
            n_in = n_out
        self.features = nn.Sequential(*blocks)
        side = config.image_size >> len(config.channels)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(n_in * side * side, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


CNN_SPEC = ArchitectureSpec(
    name="cnn",
    config_model=CNNConfig,
    factory=CNN,
    description="Small image classifier: [conv (+BatchNorm), ReLU, max-pool] blocks + Linear.",
)
