"""The benchmark's tasks: real data that ships offline and small plain-torch models.

Every task is a (train, held-out) pair of tensors plus a model builder; batches come from
:func:`lrprobe.worker.newton.minibatches`, so a probe and a training run see the same kind of batch.

Eight tasks, chosen so that a rule cannot be tuned to one kind of model (issue 11):

- ``digits-mlp``: tanh MLP, where per-layer rates once collapsed under plain SGD;
- ``digits-cnn``: a small 2-D CNN on the 8×8 images;
- ``breast_cancer-mlp``: ReLU MLP on 426 examples, overfitting within a few dozen steps;
- ``mnist1d-cnn``: a strided 1-D CNN;
- ``gpt-lm``: a byte-level 2-block GPT on standard-library source (LayerNorm, embeddings);
- ``wine-resmlp``: a residual MLP with LayerNorm on 133 training examples, where overfitting
  dominates (the held-out loss turns up long before the training loss stops falling);
- ``digits-transformer``: a 1-block transformer classifier reading the image's 8 rows as tokens;
- ``digits-deepmlp``: an 8-layer ReLU MLP without normalisation, where a large global rate
  diverges (its lower layers tolerate far less than its head);
- ``wine-mlp``: a tanh MLP on wine, where a global rate of 3 sends the held-out loss to chance
  level and gn-probe/0.2's per-layer rates once did the same with plain SGD (seed 8) while its
  single-group rate did not: the case ``tests/bench/test_no_collapse.py`` pins.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer, load_digits, load_wine  # type: ignore[import-untyped]
from torch import Tensor, nn

from lrprobe.worker.newton import LossFn, losses

TASKS = (
    "digits-mlp", "digits-cnn", "breast_cancer-mlp", "mnist1d-cnn", "gpt-lm", "wine-resmlp",
    "digits-transformer", "digits-deepmlp", "wine-mlp",
)  # fmt: skip

# A few standard-library modules of plain, varied Python: the LM's text (about 240 KB).
_LM_SOURCES = ("textwrap.py", "string.py", "heapq.py", "bisect.py", "fnmatch.py", "shlex.py",
               "glob.py", "difflib.py", "calendar.py", "argparse.py")  # fmt: skip
_CONTEXT = 32


@dataclass(frozen=True)
class Task:
    name: str
    build: Callable[[], nn.Module]
    loss: LossFn
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    batch_size: int

    def model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return self.build()

    def criterion(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``loss`` as ``criterion(model(x), y)``, the form torch-lr-finder calls."""
        if self.loss is losses.lm_cross_entropy:
            return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))
        return F.cross_entropy(outputs, targets)


def load(name: str) -> Task:
    return _load(name)


@functools.cache
def _load(name: str) -> Task:
    if name == "digits-mlp":
        (xtr, ytr), (xte, yte) = _split(*_digits())
        mlp = lambda: _mlp([64, 128, 64, 10], nn.Tanh)  # noqa: E731
        return Task(name, mlp, losses.cross_entropy, (xtr, ytr), (xte, yte), 32)
    if name == "digits-cnn":
        (xtr, ytr), (xte, yte) = _split(*_digits())
        shape = (-1, 1, 8, 8)
        train, test = (xtr.reshape(shape), ytr), (xte.reshape(shape), yte)
        return Task(name, _digits_cnn, losses.cross_entropy, train, test, 32)
    if name == "breast_cancer-mlp":
        data = load_breast_cancer()
        x = _standardise(torch.tensor(data.data, dtype=torch.float32))
        train, test = _split(x, torch.tensor(data.target))
        mlp = lambda: _mlp([30, 64, 64, 2], nn.ReLU)  # noqa: E731
        return Task(name, mlp, losses.cross_entropy, train, test, 32)
    if name == "mnist1d-cnn":
        x, y = _mnist1d()
        train, test = _split(x.unsqueeze(1), y)
        return Task(name, _mnist1d_cnn, losses.cross_entropy, train, test, 32)
    if name == "gpt-lm":
        train, test = _text_windows()
        return Task(name, TinyGPT, losses.lm_cross_entropy, train, test, 16)
    if name == "wine-resmlp":
        data = load_wine()
        x = _standardise(torch.tensor(data.data, dtype=torch.float32))
        train, test = _split(x, torch.tensor(data.target))
        return Task(name, ResidualMLP, losses.cross_entropy, train, test, 16)
    if name == "wine-mlp":
        data = load_wine()
        x = _standardise(torch.tensor(data.data, dtype=torch.float32))
        train, test = _split(x, torch.tensor(data.target))
        mlp = lambda: _mlp([13, 64, 64, 3], nn.Tanh)  # noqa: E731
        return Task(name, mlp, losses.cross_entropy, train, test, 32)
    if name == "digits-transformer":
        (xtr, ytr), (xte, yte) = _split(*_digits())
        shape = (-1, 8, 8)  # 8 tokens (the image's rows) of 8 features
        train, test = (xtr.reshape(shape), ytr), (xte.reshape(shape), yte)
        return Task(name, RowTransformer, losses.cross_entropy, train, test, 32)
    if name == "digits-deepmlp":
        (xtr, ytr), (xte, yte) = _split(*_digits())
        mlp = lambda: _mlp([64, *[48] * 7, 10], nn.ReLU)  # noqa: E731
        return Task(name, mlp, losses.cross_entropy, (xtr, ytr), (xte, yte), 32)
    raise ValueError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")


def _digits() -> tuple[Tensor, Tensor]:
    data = load_digits()
    return _standardise(torch.tensor(data.data, dtype=torch.float32)), torch.tensor(data.target)


def _mnist1d() -> tuple[Tensor, Tensor]:
    try:  # the intake's generator when it is there; its output is deterministic for a seed
        from lrprobe.worker.intake.data.mnist1d import make_mnist1d

        x, y = make_mnist1d(4000, seed=42)
        return torch.tensor(np.array(x)), torch.tensor(np.array(y))
    except ImportError:
        return _mnist1d_fallback(4000)


def _mnist1d_fallback(n: int) -> tuple[Tensor, Tensor]:
    """Ten smooth 1-D templates, randomly scaled, shifted and noised, length 40."""
    rng = np.random.default_rng(42)
    grid = np.linspace(0, 1, 12)
    templates = np.stack([np.sin((k + 1) * math.pi * grid) * (1 + k % 3) for k in range(10)])
    y = np.arange(n) % 10
    x = np.zeros((n, 40), dtype=np.float32)
    for i, label in enumerate(y):
        scale = 1 + 0.2 * rng.standard_normal()
        start = rng.integers(0, 28)
        x[i, start : start + 12] = scale * templates[label]
        x[i] += 0.25 * rng.standard_normal(40)
    order = rng.permutation(n)
    return _standardise(torch.tensor(x[order])), torch.tensor(y[order])


def _text_windows() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Byte-level windows of standard-library source: 90 % train, the tail held out."""
    lib = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    text = b"".join((lib / name).read_bytes() for name in _LM_SOURCES if (lib / name).exists())
    if len(text) < 20_000:
        raise RuntimeError(f"too little standard-library source found under {lib}")
    tokens = torch.tensor(list(text), dtype=torch.long)
    cut = int(0.9 * len(tokens))
    windows = []
    for part in (tokens[:cut], tokens[cut:]):
        n = (len(part) - 1) // _CONTEXT
        w = part[: n * _CONTEXT + 1]
        windows.append((w[:-1].reshape(n, _CONTEXT), w[1:].reshape(n, _CONTEXT)))
    (xtr, ytr), (xte, yte) = windows
    return (xtr, ytr), (xte[:256], yte[:256])


def _split(x: Tensor, y: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = int(0.75 * len(x))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def _standardise(x: Tensor) -> Tensor:
    return (x - x.mean(0)) / x.std(0).clamp(min=1e-6)


def _mlp(widths: list[int], activation: type[nn.Module]) -> nn.Module:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers[:-1])


def _digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip


def _mnist1d_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 16, 5, padding=2), nn.ReLU(), nn.Conv1d(16, 16, 5, stride=2, padding=2),
        nn.ReLU(), nn.Conv1d(16, 16, 5, stride=2, padding=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 10, 10),
    )  # fmt: skip


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        # Explicit causal attention: the fused kernel has no double-backward on every build.
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """Byte-level GPT: 2 pre-norm blocks, width 32, 2 heads, context 32."""

    def __init__(self, vocab: int = 256, width: int = 32, depth: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(_CONTEXT, width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(depth)])
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.ln(self.blocks(x)))


class ResidualMLP(nn.Module):
    """13 features → width 64 → 2 pre-norm residual blocks → 3 classes."""

    def __init__(self, features: int = 13, width: int = 64, classes: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(features, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU()) for _ in range(2)
        )
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.ln(h))


class RowTransformer(nn.Module):
    """A 1-block encoder over the 8 rows of a digit (no causal mask), mean-pooled, 10 classes."""

    def __init__(self, width: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(8, width)
        self.pos = nn.Parameter(torch.zeros(8, width))
        self.ln1, self.ln2, self.ln = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x) + self.pos
        B, T, C = h.shape
        q, k, v = self.qkv(self.ln1(h)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        # Explicit attention: the fused kernel has no double-backward on every build.
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)).softmax(-1)
        h = h + self.proj((att @ v).transpose(1, 2).reshape(B, T, C))
        h = h + self.out(F.gelu(self.fc(self.ln2(h))))
        return self.head(self.ln(h).mean(1))
