"""Built-in plain-torch architectures and the registry that names them.

A checkpoint's weights are loaded into a module that *we* build from a registry entry and a
validated config, so no user code is needed to reconstruct a model. Deployments add entries
through the ``lrprobe.architectures`` entry-point group (see :data:`ENTRY_POINT_GROUP`).
"""

from lrprobe.worker.intake.checkpoints.architectures._registry import (
    ENTRY_POINT_GROUP,
    ArchitectureSpec,
    get_architecture,
    list_architectures,
    refresh_architectures,
)
from lrprobe.worker.intake.checkpoints.architectures.cnn import CNN, CNN_SPEC, CNNConfig
from lrprobe.worker.intake.checkpoints.architectures.gpt import GPT, GPT_SPEC, GPTConfig
from lrprobe.worker.intake.checkpoints.architectures.mlp import MLP, MLP_SPEC, MLPConfig
from lrprobe.worker.intake.checkpoints.architectures.resnet import RESNET_SPEC, ResNet, ResNetConfig

__all__ = [
    "CNN",
    "CNN_SPEC",
    "ENTRY_POINT_GROUP",
    "GPT",
    "GPT_SPEC",
    "MLP",
    "MLP_SPEC",
    "RESNET_SPEC",
    "ArchitectureSpec",
    "CNNConfig",
    "GPTConfig",
    "MLPConfig",
    "ResNet",
    "ResNetConfig",
    "get_architecture",
    "list_architectures",
    "refresh_architectures",
]
