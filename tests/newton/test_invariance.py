"""T3, T4, T6: invariances of the grouped-Newton step (docs/method.md §3.2 and §5).

A per-group scalar reparameterisation θ_[s] = a_s φ_[s] + b_[s] maps a gradient direction to
a_s u_[s], so ḡ' = Λḡ, H̄' = ΛH̄Λ, d' = Λd with Λ = Diag(a_s²): η'_s = η_s / a_s² and the step in
θ-space, hence the network after the step, is the same. Groups that mix tensors rescaled
differently break this (negative controls).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from lrprobe.worker.newton import Solution, Summaries, partition, solve, summaries
from tests.newton.cases import (
    DTYPE,
    N_OUT,
    Batch,
    LossFn,
    TanhMLP,
    assert_scaled_close,
    ce_loss,
    gradient,
    outputs_with,
    stepped_parameters,
)

Rule = str | Mapping[str, str]


def batch(n_in: int, n_out: int, seed: int, n: int = 32) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=gen, dtype=DTYPE)
    return x, torch.randint(0, n_out, (n,), generator=gen)


def one_step(
    model: nn.Module, rule: Rule, loss_fn: LossFn = ce_loss, n_in: int = 10, n_out: int = 4
) -> tuple[Solution, Tensor, Summaries]:
    """Direction = gradient on batch A, summaries on batch B, cubic rule (λ = 1); returns η and
    the outputs of the stepped network on a held-out batch."""
    direction = gradient(model, loss_fn, batch(n_in, n_out, seed=10))
    groups = partition(model, rule=rule)
    summ = summaries(model, loss_fn, batch(n_in, n_out, seed=11), direction, groups)
    sol = solve(summ, lam_int=1.0)
    params = stepped_parameters(model, direction, [g.param_names for g in groups], sol.eta)
    return sol, outputs_with(model, params, batch(n_in, n_out, seed=12)[0]), summ


# --------------------------------------------------------------------------------------------
# T3: ReLU layer rescaling

C = 7.0


def relu_pair(bias2: bool = True) -> tuple[nn.Module, nn.Module]:
    """ReLU MLP 10-16-12-4 and its twin W₁ ← cW₁, b₁ ← cb₁, W₂ ← W₂/c (b₂, W₃, b₃ unchanged).

    Without `bias2` the middle layer has no bias, so each *layer* is rescaled by one scalar.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12, bias=bias2), nn.ReLU(), nn.Linear(12, 4)
    ).to(DTYPE)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin[0].weight.mul_(C)
        twin[0].bias.mul_(C)
        twin[2].weight.div_(C)
    return model, twin


@pytest.mark.parametrize("bias2", [True, False])
def test_relu_twin_computes_the_same_function(bias2: bool) -> None:
    model, twin = relu_pair(bias2)
    x = batch(10, 4, seed=12)[0]
    with torch.no_grad():
        assert_scaled_close(twin(x), model(x), rel=1e-13)


@pytest.mark.parametrize(
    ("rule", "bias2", "ratios"),
    [
        ("tensor", True, (C**2, C**2, C**-2, 1.0, 1.0, 1.0)),
        ("layer", False, (C**2, C**-2, 1.0)),
    ],
)
def test_relu_layer_rescaling_rescales_eta_and_keeps_the_step(
    rule: str, bias2: bool, ratios: Sequence[float]
) -> None:
    model, twin = relu_pair(bias2)
    sol, out, summ = one_step(model, rule)
    sol_twin, out_twin, summ_twin = one_step(twin, rule)
    assert sol.status == sol_twin.status
    assert_scaled_close(sol_twin.eta / sol.eta, torch.tensor(ratios, dtype=DTYPE), rel=1e-8)
    assert_scaled_close(out_twin, out, rel=1e-9, what="outputs after the step")
    assert sol_twin.model_value == pytest.approx(sol.model_value, rel=1e-9)
    assert summ_twin.loss == pytest.approx(summ.loss, rel=1e-13)


@pytest.mark.parametrize(
    ("rule", "bias2"),
    [({"weight": "w", "bias": "b"}, False), ("single", False), ("layer", True)],
    ids=["wb", "single", "layer-with-unscaled-bias"],
)
def test_relu_layer_rescaling_is_not_invariant_when_groups_mix_scales(
    rule: Rule, bias2: bool
) -> None:
    model, twin = relu_pair(bias2)
    _, out, _ = one_step(model, rule)
    _, out_twin, _ = one_step(twin, rule)
    difference = float((out_twin - out).abs().max()) / float(out.abs().max())
    assert difference > 1e-3, f"relative output difference {difference:.2e}: expected a clear break"


# --------------------------------------------------------------------------------------------
# T4: generic per-group affine reparameterisation

A = (0.1, 3.0, -2.0, 0.5, 10.0, 0.3)


class Affine(nn.Module):
    """Trainable φ_i with base parameter i = a_i φ_i + b_i; the base model is not registered."""

    def __init__(self, base: nn.Module, a: Sequence[float], seed: int = 4) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self._base = (base,)
        self.names = [n for n, _ in base.named_parameters()]
        self.a = list(a)
        self.b = []
        for i, (_, p) in enumerate(base.named_parameters()):
            b = torch.randn(p.shape, generator=gen, dtype=DTYPE)
            self.b.append(b)
            self.register_parameter(f"phi{i}", nn.Parameter((p.detach() - b) / self.a[i]))

    def theta(self, phi: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {n: self.a[i] * phi[f"phi{i}"] + self.b[i] for i, n in enumerate(self.names)}

    def forward(self, x: Tensor) -> Tensor:
        return functional_call(self._base[0], self.theta(dict(self.named_parameters())), (x,))


def test_affine_reparameterisation_divides_eta_by_a_squared_and_keeps_the_step() -> None:
    torch.manual_seed(0)
    base = TanhMLP((7, 6, 5, N_OUT)).to(DTYPE)
    wrapped = Affine(base, A)
    sol, out, _ = one_step(base, "tensor", n_in=7, n_out=N_OUT)

    direction = gradient(wrapped, ce_loss, batch(7, N_OUT, seed=10))
    groups = partition(wrapped, rule="tensor")
    assert [g.param_names for g in groups] == [(f"phi{i}",) for i in range(len(A))]
    summ = summaries(wrapped, ce_loss, batch(7, N_OUT, seed=11), direction, groups)
    sol_wrapped = solve(summ, lam_int=1.0)
    phi = stepped_parameters(wrapped, direction, [g.param_names for g in groups], sol_wrapped.eta)
    out_wrapped = outputs_with(base, wrapped.theta(phi), batch(7, N_OUT, seed=12)[0])

    a2 = torch.tensor(A, dtype=DTYPE) ** 2
    assert sol_wrapped.status == sol.status
    assert_scaled_close(sol.eta / sol_wrapped.eta, a2, rel=1e-8, what="η / η'")
    assert_scaled_close(out_wrapped, out, rel=1e-9, what="outputs after the step")


# --------------------------------------------------------------------------------------------
# T6: scale invariances

SCALES = [1e-3, 7.5, 1e4]


def tanh_model() -> nn.Module:
    torch.manual_seed(1)
    return TanhMLP((10, 8, 6, 4)).to(DTYPE)


@pytest.mark.parametrize("c", SCALES)
def test_scaling_the_loss_scales_the_summaries_and_keeps_eta(c: float) -> None:
    model = tanh_model()
    sol, _, summ = one_step(model, "layer")

    def scaled(m: nn.Module, b: Batch) -> Tensor:
        return c * ce_loss(m, b)

    direction = gradient(model, ce_loss, batch(10, 4, seed=10))  # the same u as in one_step
    groups = partition(model)
    summ_c = summaries(model, scaled, batch(10, 4, seed=11), direction, groups)
    assert summ.d3 is not None and summ_c.d3 is not None
    assert_scaled_close(summ_c.g, c * summ.g, rel=1e-12)
    assert_scaled_close(summ_c.H, c * summ.H, rel=1e-12)
    assert_scaled_close(summ_c.d3, c * summ.d3, rel=1e-12)
    sol_c = solve(summ_c, lam_int=1.0)
    assert sol_c.status == sol.status
    assert_scaled_close(sol_c.eta, sol.eta, rel=1e-9)


@pytest.mark.parametrize("c", SCALES)
def test_scaling_the_direction_divides_eta(c: float) -> None:
    model = tanh_model()
    direction = gradient(model, ce_loss, batch(10, 4, seed=10))
    groups = partition(model)
    probe_batch = batch(10, 4, seed=11)
    summ = summaries(model, ce_loss, probe_batch, direction, groups)
    scaled = {n: c * u for n, u in direction.items()}
    summ_c = summaries(model, ce_loss, probe_batch, scaled, groups)
    assert summ.d3 is not None and summ_c.d3 is not None
    assert_scaled_close(summ_c.g, c * summ.g, rel=1e-12)
    assert_scaled_close(summ_c.H, c**2 * summ.H, rel=1e-12)
    assert_scaled_close(summ_c.d3, c**3 * summ.d3, rel=1e-12)
    sol, sol_c = solve(summ), solve(summ_c)
    assert sol_c.status == sol.status
    assert_scaled_close(sol_c.eta, sol.eta / c, rel=1e-9)


def random_summaries(seed: int, S: int = 5, indefinite: bool = False) -> Summaries:
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(S, S, generator=gen, dtype=DTYPE))
    ev = torch.rand(S, generator=gen, dtype=DTYPE) + 0.1
    if indefinite:
        ev[0] = -0.5
    H = Q @ torch.diag(ev) @ Q.T
    g = torch.randn(S, generator=gen, dtype=DTYPE)
    d3 = torch.randn(S, generator=gen, dtype=DTYPE)
    return Summaries(g=g, H=(H + H.T) / 2, d3=d3)


@pytest.mark.parametrize("indefinite", [False, True], ids=["pd", "indefinite"])
@pytest.mark.parametrize("c", SCALES)
def test_solver_keeps_eta_when_all_summaries_scale_alike(c: float, indefinite: bool) -> None:
    s = random_summaries(seed=7, indefinite=indefinite)
    assert s.d3 is not None
    sol = solve(s)
    sol_c = solve(Summaries(g=c * s.g, H=c * s.H, d3=c * s.d3))
    assert sol_c.status == sol.status
    assert_scaled_close(sol_c.eta, sol.eta, rel=1e-9)


@pytest.mark.parametrize("indefinite", [False, True], ids=["pd", "indefinite"])
@pytest.mark.parametrize("c", SCALES)
def test_solver_divides_eta_when_summaries_scale_like_a_scaled_direction(
    c: float, indefinite: bool
) -> None:
    s = random_summaries(seed=8, indefinite=indefinite)
    assert s.d3 is not None
    sol = solve(s)
    sol_c = solve(Summaries(g=c * s.g, H=c**2 * s.H, d3=c**3 * s.d3))
    assert sol_c.status == sol.status
    assert_scaled_close(sol_c.eta, sol.eta / c, rel=1e-9)
