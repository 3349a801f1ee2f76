"""T7: quadratic sanity. L(θ) = ½θᵀAθ − bᵀθ with one scalar parameter per group and u = ∇L:
the grouped-Newton step is Newton's step and lands on A⁻¹b; one group gives Cauchy's step gᵀg/gᵀAg.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lrprobe.worker.newton import SolveStatus, partition, solve, summaries
from tests.newton.cases import DTYPE, assert_scaled_close, gradient, stepped_parameters

N = 5
BATCH = (torch.zeros(1, dtype=DTYPE), torch.zeros(1, dtype=DTYPE))  # ignored by the loss


class Quadratic(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        M = torch.randn(N, N, generator=gen, dtype=DTYPE)
        self.A = M @ M.T + 0.5 * torch.eye(N, dtype=DTYPE)
        self.b = torch.randn(N, generator=gen, dtype=DTYPE)
        theta = torch.randn(N, generator=gen, dtype=DTYPE)
        for i in range(N):
            self.register_parameter(f"p{i}", nn.Parameter(theta[i].clone()))

    def theta(self) -> Tensor:
        return torch.stack([getattr(self, f"p{i}") for i in range(N)])

    def forward(self) -> Tensor:
        theta = self.theta()
        return 0.5 * theta @ self.A @ theta - self.b @ theta


def quadratic_loss(model: nn.Module, batch: object) -> Tensor:
    return model()


# A regex partition that lists the scalars in reverse: the group order differs from the model's.
REVERSED = {f"^p{i}$": f"g{i}" for i in reversed(range(N))}


@pytest.mark.parametrize("rule", ["tensor", REVERSED], ids=["tensor", "regex-reversed"])
def test_one_group_per_scalar_lands_on_the_minimiser(rule: str | dict[str, str]) -> None:
    model = Quadratic()
    u = gradient(model, quadratic_loss, BATCH)
    groups = partition(model, rule=rule)
    assert len(groups) == N
    summ = summaries(model, quadratic_loss, BATCH, u, groups)
    assert summ.d3 is not None and torch.all(summ.d3 == 0), "L is quadratic: no third order"
    sol = solve(summ)
    assert sol.status == SolveStatus("newton")
    params = stepped_parameters(model, u, [g.param_names for g in groups], sol.eta)
    landed = torch.stack([params[f"p{i}"] for i in range(N)])
    assert_scaled_close(landed, torch.linalg.solve(model.A, model.b), rel=1e-10)


def test_single_group_step_is_cauchys_step() -> None:
    model = Quadratic()
    u = gradient(model, quadratic_loss, BATCH)
    g = torch.stack([u[f"p{i}"] for i in range(N)])
    summ = summaries(model, quadratic_loss, BATCH, u, partition(model, rule="single"))
    sol = solve(summ)
    assert sol.status == SolveStatus("newton")
    expected = float(g @ g) / float(g @ model.A @ g)
    assert float(sol.eta[0]) == pytest.approx(expected, rel=1e-12)


def test_quadratic_summaries_are_the_exact_projections() -> None:
    model = Quadratic()
    u = gradient(model, quadratic_loss, BATCH)
    g = torch.stack([u[f"p{i}"] for i in range(N)])
    summ = summaries(model, quadratic_loss, BATCH, u, partition(model, rule="tensor"))
    # u = Aθ − b, so ḡ_s = u_s², H̄ = U A U.
    with torch.no_grad():
        assert_scaled_close(g, model.A @ model.theta() - model.b, rel=1e-14)
    assert_scaled_close(summ.g, g * g, rel=1e-14)
    assert_scaled_close(summ.H, g[:, None] * model.A * g[None, :], rel=1e-14)
