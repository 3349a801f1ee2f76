"""lrprobe: per-layer learning rates for PyTorch models from one short grouped-Newton probe.

The top level is lazy, so ``import lrprobe`` stays light and never imports torch by itself:

- ``lrprobe.Client`` and ``lrprobe.AsyncClient``: the SDK (pydantic + httpx only);
- ``lrprobe.probe``: the numeric core (needs the ``worker`` extra, i.e. torch), and
  ``lrprobe.warmup_cosine``: the warm-up + cosine schedule the benchmark measured, with the
  recommended rates as its peak;
- ``lrprobe.Reprobe``: re-probing during a plain training loop (``lrprobe.integrations``, which
  also holds the Lightning and Hugging Face callbacks);
- ``lrprobe.get_architecture`` and ``lrprobe.save_checkpoint``: build a registry architecture
  and write its weights as a checkpoint the service and ``lrprobe probe`` load (torch);
- ``lrprobe.__version__``: the installed distribution's version.

Subpackages: ``lrprobe.client`` (SDK), ``lrprobe.worker`` (numeric core ``lrprobe.worker.newton``
and safe intake ``lrprobe.worker.intake``), ``lrprobe.service`` (API and dashboard),
``lrprobe.cli``, ``lrprobe.migrations``, ``lrprobe.integrations`` and ``lrprobe.rules`` (the
torch-free intake rulebook the service and the worker share).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("lrprobe")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# Public name -> module that defines it; imported on first access only.
_LAZY = {
    "Reprobe": "lrprobe.integrations",
    "Client": "lrprobe.client",
    "AsyncClient": "lrprobe.client",
    "probe": "lrprobe.worker.newton",
    "get_architecture": "lrprobe.worker.intake.checkpoints.architectures",
    "save_checkpoint": "lrprobe.worker.intake.checkpoints",
    "warmup_cosine": "lrprobe.worker.newton",
}

__all__ = [
    "AsyncClient",
    "Client",
    "Reprobe",
    "__version__",
    "get_architecture",
    "probe",
    "save_checkpoint",
    "warmup_cosine",
]

if TYPE_CHECKING:
    from lrprobe.client import AsyncClient, Client
    from lrprobe.integrations import Reprobe
    from lrprobe.worker.intake.checkpoints import save_checkpoint
    from lrprobe.worker.intake.checkpoints.architectures import get_architecture
    from lrprobe.worker.newton import probe, warmup_cosine


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lrprobe' has no attribute {name!r}")
    try:
        value = getattr(import_module(module), name)
    except ModuleNotFoundError as exc:
        # The commands' own table of what each extra brings (imported only on this path).
        from lrprobe.cli.extras import EXTRA_MODULES

        if exc.name not in EXTRA_MODULES["worker"]:
            raise
        raise ModuleNotFoundError(
            f"lrprobe.{name} needs the worker extra ({exc.name} is not installed): "
            "pip install 'lrprobe[worker]'",
            name=exc.name,
        ) from exc
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
