"""T2: coarsening identities between the tensor, layer and single partitions (docs/method.md §1.4).

With a 0/1 membership matrix C (fine tensor groups × coarse groups): ḡ_c = Cᵀḡ_f, H̄_c = CᵀH̄_fC,
D̄_c = D̄_f ×₁C ×₂C ×₃C, so the coarse diagonal d3_c = Σ_{s,t,v ∈ c} D̄_f,stv needs the full fine
D̄ (brute force here; `summaries` only returns its diagonal).
"""

from __future__ import annotations

import functools

import pytest
import torch

from lrprobe.worker.newton import Group, Summaries, partition, summaries
from tests.newton.cases import DTYPE, Case, Reference, assert_scaled_close, make_problem, reference

MODELS = ["mlp_tanh", "cnn_bn", "cnn_in", "transformer", "unused_layer"]


@functools.cache
def computed(model_name: str) -> tuple[dict[str, list[Group]], dict[str, Summaries], Reference]:
    problem = make_problem(Case(model_name, "ce", "tensor"))
    groups = {rule: partition(problem.model, rule=rule) for rule in ("tensor", "layer", "single")}
    got = {
        rule: summaries(problem.model, problem.loss_fn, problem.batch, problem.direction, grp)
        for rule, grp in groups.items()
    }
    fine = reference(
        problem.model,
        problem.loss_fn,
        problem.batch,
        problem.direction,
        [g.param_names for g in groups["tensor"]],
        full=True,
    )
    return groups, got, fine


def membership(fine: list[Group], coarse: list[Group]) -> torch.Tensor:
    C = torch.zeros(len(fine), len(coarse), dtype=DTYPE)
    for c, grp in enumerate(coarse):
        for s, f in enumerate(fine):
            if set(f.param_names) <= set(grp.param_names):
                C[s, c] = 1
    assert torch.all(C.sum(dim=1) == 1), "every tensor must belong to exactly one coarse group"
    return C


@pytest.mark.parametrize("model_name", MODELS)
def test_single_group_g_and_hessian_are_sums_over_tensor_groups(model_name: str) -> None:
    _, got, _ = computed(model_name)
    assert_scaled_close(got["single"].g, got["tensor"].g.sum().reshape(1), what="g")
    assert_scaled_close(got["single"].H, got["tensor"].H.sum().reshape(1, 1), what="H")


@pytest.mark.parametrize("model_name", MODELS)
def test_single_group_d3_is_the_sum_of_the_full_third_derivative(model_name: str) -> None:
    _, got, fine = computed(model_name)
    assert fine.D is not None and got["single"].d3 is not None
    assert_scaled_close(got["single"].d3, fine.D.sum().reshape(1), what="d3 single")


@pytest.mark.parametrize("model_name", MODELS)
def test_layer_groups_are_coarsened_tensor_groups(model_name: str) -> None:
    groups, got, fine = computed(model_name)
    C = membership(groups["tensor"], groups["layer"])
    assert_scaled_close(got["layer"].g, C.T @ got["tensor"].g, what="g layer")
    assert_scaled_close(got["layer"].H, C.T @ got["tensor"].H @ C, what="H layer")
    assert fine.D is not None and got["layer"].d3 is not None
    coarse_d = torch.einsum("stv,sa,tb,vc->abc", fine.D, C, C, C)
    assert_scaled_close(got["layer"].d3, diag3(coarse_d), what="d3 layer")


def diag3(D: torch.Tensor) -> torch.Tensor:
    idx = torch.arange(D.shape[0])
    return D[idx, idx, idx]
