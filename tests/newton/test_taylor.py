"""T8: the summaries are the Taylor coefficients of f(η) = L(θ − Σ_s η_s u_[s]) at 0.

f(αη) = f(0) − α ḡᵀη + ½α² ηᵀH̄η − (α³/6) D̄[η,η,η] + O(α⁴): the cubic remainder must shrink like
α⁴ and the quadratic one like α³ with leading coefficient −D̄[η,η,η]/6. This pins the signs of
ḡ and d3 as well as their values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from lrprobe.worker.newton import Summaries, partition, summaries
from tests.newton.cases import (
    DTYPE,
    Case,
    Reference,
    assert_scaled_close,
    make_problem,
    reference,
    restricted_loss,
)

MODELS = ["mlp_tanh", "cnn_bn", "cnn_in", "transformer"]
ALPHAS = [0.1 / 2**k for k in range(4)]


@functools.cache
def computed(model_name: str) -> tuple[Callable[[Tensor], Tensor], Summaries, Reference, Tensor]:
    problem = make_problem(Case(model_name, "ce", "layer"))
    groups = partition(problem.model)
    names = [g.param_names for g in groups]
    f = restricted_loss(problem.model, problem.loss_fn, problem.batch, problem.direction, names)
    got = summaries(problem.model, problem.loss_fn, problem.batch, problem.direction, groups)
    full = reference(
        problem.model, problem.loss_fn, problem.batch, problem.direction, names, full=True
    )
    eta = torch.randn(len(groups), generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    return f, got, full, eta


def value(f: Callable[[Tensor], Tensor], eta: Tensor) -> float:
    with torch.no_grad():
        return float(f(eta))


def order(errors: list[float]) -> float:
    """Observed order p of e(α) ∝ α^p from the two smallest halvings of α."""
    return math.log2(errors[-2] / errors[-1])


@pytest.mark.parametrize("model_name", MODELS)
def test_cubic_taylor_remainder_shrinks_like_alpha_to_the_fourth(model_name: str) -> None:
    f, got, full, eta = computed(model_name)
    assert full.D is not None
    f0 = value(f, torch.zeros_like(eta))
    cubic = float(torch.einsum("stv,s,t,v->", full.D, eta, eta, eta))
    errors = [
        abs(
            value(f, a * eta)
            - (f0 - a * float(got.g @ eta) + a**2 / 2 * float(eta @ got.H @ eta) - a**3 / 6 * cubic)
        )
        for a in ALPHAS
    ]
    assert 3.6 <= order(errors) <= 4.4, errors


@pytest.mark.parametrize("model_name", MODELS)
def test_quadratic_model_error_is_the_third_order_term(model_name: str) -> None:
    f, got, full, eta = computed(model_name)
    assert full.D is not None
    f0 = value(f, torch.zeros_like(eta))
    cubic = float(torch.einsum("stv,s,t,v->", full.D, eta, eta, eta))
    errors = [
        value(f, a * eta) - (f0 - a * float(got.g @ eta) + a**2 / 2 * float(eta @ got.H @ eta))
        for a in ALPHAS
    ]
    assert 2.6 <= order([abs(e) for e in errors]) <= 3.4, errors
    a = ALPHAS[-1]
    assert errors[-1] / a**3 == pytest.approx(-cubic / 6, rel=0.05)


@pytest.mark.parametrize("model_name", MODELS)
def test_d3_is_the_diagonal_of_the_full_third_derivative(model_name: str) -> None:
    _, got, full, _ = computed(model_name)
    assert full.D is not None and got.d3 is not None
    idx = torch.arange(len(got.d3))
    assert_scaled_close(got.d3, full.D[idx, idx, idx], what="d3 vs diag D")
