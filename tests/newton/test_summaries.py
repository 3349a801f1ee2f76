"""T1: ḡ, H̄ and diag D̄ from `summaries` against brute-force float64 derivatives of f(η)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

from lrprobe.worker.newton import Group, Summaries, losses, partition, summaries
from tests.newton.cases import (
    CASES,
    DTYPE,
    Case,
    Problem,
    Reference,
    assert_scaled_close,
    build_model,
    finite_differences,
    make_batch,
    make_problem,
    reference,
    restricted_loss,
)

IDS = [c.id for c in CASES]


@functools.cache
def computed(case: Case) -> tuple[Problem, Reference, Summaries]:
    problem = make_problem(case)
    groups = partition(problem.model, rule=case.rule)
    ref = reference(
        problem.model, problem.loss_fn, problem.batch, problem.direction, groups_of(groups)
    )
    got = summaries(problem.model, problem.loss_fn, problem.batch, problem.direction, groups)
    return problem, ref, got


def groups_of(groups: list[Group]) -> list[tuple[str, ...]]:
    return [g.param_names for g in groups]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_g_matches_brute_force(case: Case) -> None:
    _, ref, got = computed(case)
    assert got.g.dtype == DTYPE and got.g.device.type == "cpu"
    assert_scaled_close(got.g, ref.g, what=f"g {case.id}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hessian_matches_brute_force(case: Case) -> None:
    _, ref, got = computed(case)
    assert got.H.dtype == DTYPE and got.H.device.type == "cpu"
    assert_scaled_close(got.H, got.H.T, rel=1e-14, what="H symmetric")
    assert_scaled_close(got.H, ref.H, what=f"H {case.id}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_d3_matches_brute_force(case: Case) -> None:
    _, ref, got = computed(case)
    assert got.d3 is not None and got.d3.dtype == DTYPE and got.d3.device.type == "cpu"
    assert_scaled_close(got.d3, ref.d3, what=f"d3 {case.id}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_loss_norms_and_names_are_reported(case: Case) -> None:
    problem, ref, got = computed(case)
    groups = partition(problem.model, rule=case.rule)
    norms = torch.tensor(
        [sum(float((problem.direction[n] ** 2).sum()) for n in g.param_names) for g in groups],
        dtype=DTYPE,
    )
    assert got.loss == pytest.approx(ref.loss, rel=1e-12)
    assert got.u_sq_norm.dtype == DTYPE
    assert_scaled_close(got.u_sq_norm, norms, rel=1e-12, what="u_sq_norm")
    assert got.group_names == tuple(g.name for g in groups)


@pytest.mark.parametrize("model_name", ["mlp_tanh", "cnn_bn", "transformer"])
def test_third_order_false_gives_no_d3_and_the_same_g_and_hessian(model_name: str) -> None:
    problem, ref, _ = computed(Case(model_name, "ce", "layer"))
    groups = partition(problem.model)
    got = summaries(
        problem.model, problem.loss_fn, problem.batch, problem.direction, groups, third_order=False
    )
    assert got.d3 is None
    assert_scaled_close(got.g, ref.g, what="g")
    assert_scaled_close(got.H, ref.H, what="H")


@pytest.mark.parametrize("rule", ["layer", "tensor"])
def test_unused_layer_gets_zero_g_and_zero_hessian_row(rule: str) -> None:
    # A random direction moves the unused layer too (u ≠ 0), yet the loss does not see it.
    problem = make_problem(Case("unused_layer", "ce", rule, "random"))
    groups = partition(problem.model, rule=rule)
    got = summaries(problem.model, problem.loss_fn, problem.batch, problem.direction, groups)
    unused = [
        i for i, g in enumerate(groups) if all(n.startswith("unused.") for n in g.param_names)
    ]
    assert len(unused) == {"layer": 1, "tensor": 2, "single": 0}[rule]
    for i in unused:
        assert got.g[i] == 0
        assert torch.all(got.H[i] == 0) and torch.all(got.H[:, i] == 0)
        assert got.d3 is not None and got.d3[i] == 0
        assert got.u_sq_norm[i] > 0


def test_frozen_parameters_stay_fixed_and_need_no_direction() -> None:
    problem = make_problem(Case("transformer", "ce", "layer"))
    problem.model.ln1.requires_grad_(False)
    problem.model.fc1.weight.requires_grad_(False)
    groups = partition(problem.model)
    direction = {n: u for n, u in problem.direction.items() if not n.startswith(("ln1.", "fc1.w"))}
    ref = reference(problem.model, problem.loss_fn, problem.batch, direction, groups_of(groups))
    got = summaries(problem.model, problem.loss_fn, problem.batch, direction, groups)
    assert got.d3 is not None
    assert_scaled_close(got.g, ref.g, what="g")
    assert_scaled_close(got.H, ref.H, what="H")
    assert_scaled_close(got.d3, ref.d3, what="d3")


def test_a_subset_of_groups_keeps_the_other_parameters_fixed() -> None:
    problem = make_problem(Case("mlp_tanh", "ce", "layer"))
    groups = partition(problem.model)[1:]
    ref = reference(
        problem.model, problem.loss_fn, problem.batch, problem.direction, groups_of(groups)
    )
    got = summaries(problem.model, problem.loss_fn, problem.batch, problem.direction, groups)
    assert got.d3 is not None
    assert_scaled_close(got.g, ref.g, what="g")
    assert_scaled_close(got.H, ref.H, what="H")
    assert_scaled_close(got.d3, ref.d3, what="d3")


def test_finite_differences_agree_on_a_batchnorm_cnn() -> None:
    """Central differences (spec T1 variant): error O(h²) plus rounding ε·|f|/h³, so d3 gets a
    larger step and a looser tolerance; the fused-kernel error this guards against was 4e-2."""
    problem, _, got = computed(Case("cnn_bn", "ce", "layer"))
    groups = partition(problem.model)
    f = restricted_loss(
        problem.model, problem.loss_fn, problem.batch, problem.direction, groups_of(groups)
    )
    fd, fd3 = finite_differences(f, len(groups), h=5e-4), finite_differences(f, len(groups))
    assert_scaled_close(got.g, fd.g, rel=1e-5, what="g vs finite differences")
    assert_scaled_close(got.H, fd.H, rel=1e-5, what="H vs finite differences")
    assert_scaled_close(got.d3, fd3.d3, rel=1e-4, what="d3 vs finite differences")


@pytest.mark.parametrize("model_name", ["cnn_bn", "cnn_in", "transformer"])
def test_brute_force_reference_agrees_with_finite_differences_through_norms(
    model_name: str,
) -> None:
    # Self-check of the oracle where fused layer_norm / batch_norm get the 3rd derivative wrong.
    problem = make_problem(Case(model_name, "ce", "layer"))
    groups = groups_of(partition(problem.model))
    f = restricted_loss(problem.model, problem.loss_fn, problem.batch, problem.direction, groups)
    ref = reference(problem.model, problem.loss_fn, problem.batch, problem.direction, groups)
    fd, fd3 = finite_differences(f, len(groups), h=5e-4), finite_differences(f, len(groups))
    assert_scaled_close(ref.g, fd.g, rel=1e-5, what="g")
    assert_scaled_close(ref.H, fd.H, rel=1e-5, what="H")
    assert_scaled_close(ref.d3, fd3.d3, rel=1e-4, what="d3")
    with torch.no_grad():
        assert ref.loss == pytest.approx(float(problem.loss_fn(problem.model, problem.batch)))


class Polynomial(nn.Module):
    """L(p, q) = q‖p‖² + q³/3 + Σ p_i³/3, with hand-written derivatives below."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor([0.5, -1.5], dtype=DTYPE))
        self.q = nn.Parameter(torch.tensor(0.7, dtype=DTYPE))

    def forward(self) -> Tensor:
        return self.q * (self.p**2).sum() + self.q**3 / 3 + (self.p**3).sum() / 3


def polynomial_loss(model: nn.Module, batch: object) -> Tensor:
    return model()


POLY_U = {"p": torch.tensor([0.3, -2.0], dtype=DTYPE), "q": torch.tensor(1.2, dtype=DTYPE)}


def test_polynomial_toy_matches_hand_derivatives() -> None:
    model = Polynomial()
    p, q = model.p.detach(), float(model.q.detach())
    up, uq = POLY_U["p"], float(POLY_U["q"])
    # ∂L/∂p_i = 2q p_i + p_i², ∂L/∂q = ‖p‖² + q²; ∂²L/∂p_i² = 2q + 2p_i, ∂²L/∂p_i∂q = 2p_i,
    # ∂²L/∂q² = 2q; ∂³L/∂p_i³ = 2, ∂³L/∂p_i²∂q = 2, ∂³L/∂q³ = 2.
    g = torch.tensor(
        [float(((2 * q * p + p**2) * up).sum()), float((p**2).sum() + q**2) * uq], dtype=DTYPE
    )
    H_pq = float((2 * p * up).sum()) * uq
    H = torch.tensor(
        [[float(((2 * q + 2 * p) * up**2).sum()), H_pq], [H_pq, 2 * q * uq**2]], dtype=DTYPE
    )
    d3 = torch.tensor([float(2 * (up**3).sum()), 2 * uq**3], dtype=DTYPE)
    groups = partition(model, rule="tensor")
    batch = (torch.zeros(1, dtype=DTYPE), torch.zeros(1, dtype=DTYPE))
    got = summaries(model, polynomial_loss, batch, POLY_U, groups)
    assert [grp.param_names for grp in groups] == [("p",), ("q",)]
    assert_scaled_close(got.g, g, rel=1e-14, what="g")
    assert_scaled_close(got.H, H, rel=1e-14, what="H")
    assert_scaled_close(got.d3, d3, rel=1e-14, what="d3")
    with torch.no_grad():
        assert got.loss == pytest.approx(float(model()), rel=1e-15)


def test_polynomial_toy_single_group_sums_the_full_third_derivative() -> None:
    model = Polynomial()
    up, uq = POLY_U["p"], float(POLY_U["q"])
    # D̄_ppp + 3 D̄_ppq + 3 D̄_pqq + D̄_qqq with D̄_ppq = Σ 2 u_pi² u_q and D̄_pqq = 0.
    total = float(2 * (up**3).sum()) + 3 * float(2 * (up**2).sum()) * uq + 2 * uq**3
    batch = (torch.zeros(1, dtype=DTYPE), torch.zeros(1, dtype=DTYPE))
    got = summaries(model, polynomial_loss, batch, POLY_U, partition(model, rule="single"))
    assert got.d3 is not None
    assert float(got.d3[0]) == pytest.approx(total, rel=1e-14)


# --------------------------------------------------------------------------------------------
# The model comes out untouched


class DropoutBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(7, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(torch.tanh(self.bn(self.fc1(x)))))


def test_summaries_leave_parameters_buffers_rng_and_grads_untouched() -> None:
    torch.manual_seed(0)
    model = DropoutBNNet().to(DTYPE).train()
    model.fc1.weight.grad = torch.full_like(model.fc1.weight, 0.25)
    before = copy.deepcopy(model.state_dict())
    rng_before = torch.get_rng_state()
    batch = make_batch("mlp_tanh", "ce", seed=1)
    direction = {n: torch.ones_like(p) for n, p in model.named_parameters()}

    summaries(model, losses.cross_entropy, batch, direction, partition(model))

    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed"
    assert torch.equal(torch.get_rng_state(), rng_before), "global RNG state changed"
    assert torch.equal(model.fc1.weight.grad, torch.full_like(model.fc1.weight, 0.25))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc1.weight")
    assert model.training and all(m.training for m in model.modules())


# --------------------------------------------------------------------------------------------
# Validation


def test_missing_direction_key_raises_value_error_naming_it() -> None:
    model = build_model("mlp_tanh")
    direction = {n: torch.ones_like(p) for n, p in model.named_parameters() if n != "2.bias"}
    with pytest.raises(ValueError, match=r"2\.bias"):
        summaries(
            model,
            losses.cross_entropy,
            make_batch("mlp_tanh", "ce", 1),
            direction,
            partition(model),
        )


def test_mis_shaped_direction_raises_value_error_naming_it() -> None:
    model = build_model("mlp_tanh")
    direction = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    direction["0.weight"] = torch.ones(3, dtype=DTYPE)
    with pytest.raises(ValueError, match=r"0\.weight"):
        summaries(
            model,
            losses.cross_entropy,
            make_batch("mlp_tanh", "ce", 1),
            direction,
            partition(model),
        )


# --------------------------------------------------------------------------------------------
# The ready-made losses


@pytest.mark.parametrize(
    ("loss_name", "ours", "torch_loss"),
    [
        ("ce", losses.cross_entropy, functional.cross_entropy),
        ("mse", losses.mse, functional.mse_loss),
    ],
)
def test_ready_made_losses_are_the_torch_batch_means(
    loss_name: str, ours: object, torch_loss: object
) -> None:
    model = build_model("mlp_tanh")
    x, y = make_batch("mlp_tanh", loss_name, seed=1)
    assert callable(ours) and callable(torch_loss)
    with torch.no_grad():
        assert float(ours(model, (x, y))) == pytest.approx(float(torch_loss(model(x), y)), 1e-15)


# --------------------------------------------------------------------------------------------
# CUDA


GPU_CASES = [
    Case("mlp_tanh", "ce", "layer"),
    Case("cnn_bn", "mse", "tensor"),
    Case("transformer", "ce", "layer"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=[c.id for c in GPU_CASES])
def test_summaries_on_cuda_match_the_cpu_brute_force(case: Case) -> None:
    problem = make_problem(case)
    groups = partition(problem.model, rule=case.rule)
    ref = reference(
        problem.model, problem.loss_fn, problem.batch, problem.direction, groups_of(groups)
    )
    device = torch.device("cuda")
    model = copy.deepcopy(problem.model).to(device)
    batch = tuple(t.to(device) for t in problem.batch)
    direction = {n: u.to(device) for n, u in problem.direction.items()}
    got = summaries(model, problem.loss_fn, batch, direction, groups)
    assert got.g.device.type == "cpu" and got.g.dtype == DTYPE
    assert_scaled_close(got.g, ref.g, rel=1e-9, what="g on CUDA")
    assert_scaled_close(got.H, ref.H, rel=1e-9, what="H on CUDA")
    assert got.d3 is not None
    assert_scaled_close(got.d3, ref.d3, rel=1e-9, what="d3 on CUDA")
