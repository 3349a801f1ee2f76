"""A multi-layer perceptron: Linear layers with one activation between them."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from lrprobe.worker.intake.checkpoints.architectures._registry import ArchitectureSpec

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


class MLPConfig(BaseModel):
    """Layer widths from input to output; inputs with more than two dims are flattened."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sizes: tuple[PositiveInt, ...] = Field(
        default=(64, 128, 10),
        min_length=2,
        description="Widths from the input features to the outputs, e.g. [64, 128, 10].",
    )
    activation: Literal["tanh", "relu", "gelu"] = Field(
        default="relu", description="Activation between Linear layers."
    )
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Dropout probability after each activation."
    )
    bias: bool = Field(default=True, description="Whether Linear layers have a bias.")


class MLP(nn.Module):
    """``layers.{i}`` are the Linear layers; activation and dropout sit between them."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out, bias=config.bias)
            for n_in, n_out in zip(config.sizes[:-1], config.sizes[1:], strict=True)
        )
        self.activation = _ACTIVATIONS[config.activation]()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.dropout(self.activation(x))
        return x


MLP_SPEC = ArchitectureSpec(
    name="mlp",
    config_model=MLPConfig,
    factory=MLP,
    description="Multi-layer perceptron (Linear + tanh/relu/gelu + dropout).",
)
