"""Third derivatives through normalisation layers (fused torch 2.13 kernels get them wrong)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrprobe.worker.newton import partition, summaries
from lrprobe.worker.newton.norms import PrimitiveNorms
from lrprobe.worker.newton.state import shifted


class Channels(nn.Module):
    """(B, 16) features as (B, 2, 8) for the norms that need a channel axis."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.reshape(-1, 2, 8)).reshape(-1, 16)


NORMS = {
    "layer_norm": lambda: nn.LayerNorm(16),
    "batch_norm_train": lambda: nn.BatchNorm1d(16),
    "instance_norm": lambda: Channels(nn.InstanceNorm1d(2, affine=True)),
}


def _loss(model: nn.Module, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_d3_matches_central_differences_of_the_exact_curvature(norm: str) -> None:
    """d3 = d/dt H̄_ss(θ + t u) at 0; H̄ (second order) is exact even through fused kernels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), NORMS[norm](), nn.Tanh(), nn.Linear(16, 3)).double()
    batch = (torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,)))
    groups = partition(model, "layer")
    u = {n: 0.1 * torch.randn_like(p) for n, p in model.named_parameters()}
    d3 = summaries(model, _loss, batch, u, groups).d3
    params = dict(model.named_parameters())
    h = 1e-5
    for s, group in enumerate(groups):
        curvature = []
        for sign in (1.0, -1.0):
            with shifted(params, {n: -sign * h * u[n] for n in group.param_names}):
                H = summaries(model, _loss, batch, u, groups, third_order=False).H
            curvature.append(float(H[s, s]))
        central = (curvature[0] - curvature[1]) / (2 * h)
        assert float(d3[s]) == pytest.approx(central, rel=1e-6, abs=1e-8), group.name


def test_primitive_batch_norm_updates_running_stats_like_the_fused_kernel() -> None:
    torch.manual_seed(0)
    fused, primitive = nn.BatchNorm1d(5), nn.BatchNorm1d(5)
    x = torch.randn(32, 5)
    out_fused = fused(x)
    with PrimitiveNorms():
        out_primitive = primitive(x)
    torch.testing.assert_close(out_primitive, out_fused, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(primitive.running_mean, fused.running_mean)
    torch.testing.assert_close(primitive.running_var, fused.running_var)


def test_primitive_layer_norm_matches_the_fused_forward() -> None:
    norm = nn.LayerNorm(7)
    x = torch.randn(4, 3, 7)
    with PrimitiveNorms():
        out = norm(x)
    torch.testing.assert_close(out, norm(x), rtol=1e-5, atol=1e-6)
