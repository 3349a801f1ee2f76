"""`lrprobe demo`: a probe of a small MLP on scikit-learn's digits, no server, no download."""

from __future__ import annotations

import torch
from rich.console import Console
from sklearn.datasets import load_digits
from torch import nn

from lrprobe.cli.render import print_recommendation, probe_progress
from lrprobe.client import Recommendation
from lrprobe.worker.newton import losses, minibatches, probe


def run_demo(batches: int = 8, seed: int = 0) -> None:
    console = Console()
    torch.manual_seed(seed)
    features, labels = load_digits(return_X_y=True)
    x = torch.tensor(features / 16.0, dtype=torch.float32)
    y = torch.tensor(labels)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 10)
    )
    console.print(
        f"Probing an MLP 64-128-64-10 on digits ({len(x)} images) for plain SGD, "
        f"{batches} probe batches of 128…"
    )
    with probe_progress() as progress:
        result = probe(
            model,
            losses.cross_entropy,
            minibatches(x, y, batch_size=128, seed=seed),
            optimizer="sgd",
            num_batches=batches,
            seed=seed,
            progress=progress,
        )
    print_recommendation(Recommendation.from_dict(result.to_dict()), console)
