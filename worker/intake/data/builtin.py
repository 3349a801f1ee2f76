"""``builtin://NAME`` datasets: the small sets scikit-learn ships, and a generated MNIST-1D.

Nothing is downloaded. Preprocessing is fixed so a model trained elsewhere on the same
reference sees the same inputs:

- tabular features (``breast_cancer``, ``diabetes``, ``digits``, ``iris``, ``wine``): each
  column standardised to mean 0 and standard deviation 1 over the whole set (constant columns
  are only centred), float32;
- ``builtin://digits?shape=image``: the same 1,797 digits as ``(1, 8, 8)`` images, pixel values
  divided by 16 and then standardised with one mean and standard deviation over all pixels;
- ``builtin://diabetes`` is regression: the target (disease progression) is standardised too,
  float32 of shape ``(N,)``; the others are classification with int64 labels;
- ``builtin://mnist1d``: see ``mnist1d``; options ``seed`` (default 42),
  ``num_samples`` (default 5000, at most 100000) and ``shape=channels`` for ``(1, 40)``
  signals instead of ``(40,)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lrprobe.rules.data_refs import check_builtin_name
from lrprobe.worker.intake.data.dataset import Dataset, DatasetKind, build_dataset
from lrprobe.worker.intake.data.mnist1d import DEFAULT_NUM_SAMPLES, DEFAULT_SEED, make_mnist1d
from lrprobe.worker.intake.data.options import DataOptions

MAX_MNIST1D_SAMPLES = 100_000

_SKLEARN: dict[str, tuple[str, DatasetKind]] = {
    "breast_cancer": ("load_breast_cancer", "classification"),
    "diabetes": ("load_diabetes", "regression"),
    "digits": ("load_digits", "classification"),
    "iris": ("load_iris", "classification"),
    "wine": ("load_wine", "classification"),
}
_OPTIONS: dict[str, tuple[str, ...]] = {
    "digits": ("shape",),
    "mnist1d": ("shape", "seed", "num_samples"),
}
_SHAPES: dict[str, tuple[str, ...]] = {"digits": ("flat", "image"), "mnist1d": ("flat", "channels")}


def load_builtin(name: str, options: DataOptions, *, min_examples: int) -> Dataset:
    """The built-in dataset ``name`` with its documented preprocessing."""
    check_builtin_name(name)
    options.check_keys(_OPTIONS.get(name, ()))
    shape = options.choice("shape", _SHAPES.get(name, ("flat",)), "flat")
    if name == "mnist1d":
        seed = options.integer("seed", DEFAULT_SEED, 0, 2**63 - 1)
        count = options.integer("num_samples", DEFAULT_NUM_SAMPLES, 10, MAX_MNIST1D_SAMPLES)
        signals, labels = make_mnist1d(count, seed)
        x = torch.from_numpy(signals.copy())
        if shape == "channels":
            x = x.unsqueeze(1)
        return build_dataset(
            "mnist1d",
            "classification",
            x,
            torch.from_numpy(labels.copy()),
            num_classes=10,
            min_examples=min_examples,
        )
    loader_name, kind = _SKLEARN[name]
    bunch = _sklearn_loader(loader_name)()
    features = np.asarray(bunch.data, dtype=np.float64)
    target = np.asarray(bunch.target)
    if name == "digits" and shape == "image":
        pixels = features.reshape(-1, 1, 8, 8) / 16.0
        x = torch.from_numpy(((pixels - pixels.mean()) / pixels.std()).astype(np.float32))
    else:
        x = torch.from_numpy(_standardise(features).astype(np.float32))
    if kind == "regression":
        y = torch.from_numpy(_standardise(target.astype(np.float64)).astype(np.float32))
        return build_dataset(name, kind, x, y, min_examples=min_examples)
    class_names = tuple(str(c) for c in getattr(bunch, "target_names", ())) or None
    return build_dataset(
        name,
        kind,
        x,
        torch.from_numpy(target.astype(np.int64)),
        num_classes=len(class_names) if class_names else None,
        class_names=class_names,
        min_examples=min_examples,
    )


def _sklearn_loader(loader_name: str) -> Callable[[], Any]:
    from sklearn import datasets

    loader: Callable[[], Any] = getattr(datasets, loader_name)
    return loader


def _standardise(values: np.ndarray) -> np.ndarray:
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    return (values - mean) / np.where(std > 0, std, 1.0)
