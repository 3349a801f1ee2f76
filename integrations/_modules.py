"""Which network inside a framework's module the prober probes."""

from __future__ import annotations

from torch import nn


def submodule(root: nn.Module, path: str | None) -> nn.Module:
    """``root`` or its submodule at the dotted attribute ``path`` (``"net"``, ``"model.body"``)."""
    module = root.get_submodule(path) if path else root
    if not isinstance(module, nn.Module):
        raise TypeError(f"{path!r} is not a torch.nn.Module of {type(root).__name__}")
    return module
