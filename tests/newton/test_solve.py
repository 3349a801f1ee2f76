"""T5: the cubic rule `solve` against its characterisation and a multi-start global search.

m₃(η) = −gᵀη + ½ηᵀHη + (λ/6)‖Dη‖³ with D = Diag(|d3|^{1/3}); the global minimiser satisfies
(H + (λ/2) r D²) η = g with r = ‖Dη‖ and H + (λ/2) r D² ⪰ 0 (docs/method.md §3.2).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from torch import Tensor

from lrprobe.worker.newton import Solution, SolveStatus, Summaries, cubic_model, solve
from tests.newton.cases import DTYPE, assert_scaled_close

CUBIC = SolveStatus("cubic")
NEWTON = SolveStatus("newton")
HARD_CASE = SolveStatus("hard_case")
LEVENBERG = SolveStatus("levenberg")
EMPTY = SolveStatus("empty")


@dataclass(frozen=True)
class Problem:
    H: Tensor
    g: Tensor
    d3: Tensor
    lam: float

    @property
    def d(self) -> Tensor:
        return self.d3.abs().pow(1 / 3)

    def summaries(self) -> Summaries:
        return Summaries(g=self.g, H=self.H, d3=self.d3)


def t(values: object) -> Tensor:
    return torch.tensor(values, dtype=DTYPE)


def random_problem(seed: int, S: int, kind: str, lam: float) -> Problem:
    """`kind`: "pd" | "indefinite" (all d > 0) | "pd_partial_d" (PD, some d = 0) |
    "indefinite_partial_d" (negative curvature only where d > 0, so m₃ is bounded) |
    "badly_scaled" (indefinite, groups rescaled over six decades)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((S, S)))
    ev = np.exp(rng.uniform(np.log(0.05), np.log(5.0), S))
    if kind in ("indefinite", "indefinite_partial_d", "badly_scaled"):
        n_neg = int(rng.integers(1, S))
        ev[:n_neg] = -rng.uniform(0.05, 2.0, n_neg)
    H = Q @ np.diag(ev) @ Q.T
    g = rng.standard_normal(S)
    d = rng.uniform(0.2, 2.0, S)
    if kind in ("pd_partial_d", "indefinite_partial_d"):
        zero = rng.permutation(S)[: int(rng.integers(1, S))]
        d[zero] = 0.0
        if kind == "indefinite_partial_d":  # bounded: make H PD where d = 0
            shift = 0.1 - min(0.0, float(np.linalg.eigvalsh(H[np.ix_(zero, zero)])[0]))
            H[np.ix_(zero, zero)] += shift * np.eye(len(zero))
    d3 = d**3 * rng.choice([-1.0, 1.0], S)
    if kind == "badly_scaled":
        # the per-group rescaling of docs/method.md §5: g → Λg, H → ΛHΛ, d → Λd
        a = 10.0 ** rng.uniform(-3, 3, S)
        H, g, d3 = a[:, None] * H * a[None, :], a * g, a**3 * d3
    return Problem(t((H + H.T) / 2), t(g), t(d3), lam)


@st.composite
def problems(draw: st.DrawFn, kinds: tuple[str, ...]) -> Problem:
    return random_problem(
        seed=draw(st.integers(0, 2**32 - 1)),
        S=draw(st.integers(2, 8)),
        kind=draw(st.sampled_from(kinds)),
        lam=draw(st.sampled_from([0.1, 1.0, 10.0])),
    )


WELL_SCALED = ("pd", "indefinite", "pd_partial_d", "indefinite_partial_d")
ALL_KINDS = (*WELL_SCALED, "badly_scaled")
CHECKS = settings(max_examples=40, deadline=None, database=None, derandomize=True)
SEARCHES = settings(max_examples=25, deadline=None, database=None, derandomize=True)


def m3(p: Problem, eta: np.ndarray) -> float:
    H, g, d = p.H.numpy(), p.g.numpy(), p.d.numpy()
    return float(-g @ eta + 0.5 * eta @ H @ eta + p.lam / 6 * np.linalg.norm(d * eta) ** 3)


def m3_grad(p: Problem, eta: np.ndarray) -> np.ndarray:
    H, g, d = p.H.numpy(), p.g.numpy(), p.d.numpy()
    return -g + H @ eta + p.lam / 2 * np.linalg.norm(d * eta) * d**2 * eta


def global_minimum(p: Problem, starts: int = 12, seed: int = 0) -> float:
    """Best m₃ over BFGS runs from 0 and from random points on several scales."""
    rng = np.random.default_rng(seed)
    S = p.g.shape[0]
    radius = 1.0 + float(np.linalg.norm(p.g.numpy()))
    points = [np.zeros(S)] + [
        scale * radius * rng.standard_normal(S)
        for scale in (0.1, 1.0, 10.0)
        for _ in range(starts // 3)
    ]
    best = math.inf
    for x0 in points:
        res = minimize(
            lambda e: m3(p, e),
            x0,
            jac=lambda e: m3_grad(p, e),
            method="BFGS",
            options={"gtol": 1e-12, "maxiter": 2000},
        )
        best = min(best, float(res.fun))
    return best


def shifted(p: Problem, eta: Tensor) -> Tensor:
    r = float(torch.linalg.vector_norm(p.d * eta))
    return p.H + 0.5 * p.lam * r * torch.diag(p.d**2)


def assert_stationary(p: Problem, sol: Solution) -> None:
    M = shifted(p, sol.eta)
    residual = float(torch.linalg.vector_norm(M @ sol.eta - p.g))
    scale = float(torch.linalg.vector_norm(p.g)) + float(
        torch.linalg.matrix_norm(M, ord=2)
    ) * float(torch.linalg.vector_norm(sol.eta))
    assert residual <= 1e-10 * scale, f"residual {residual:.3e}, scale {scale:.3e}"


def assert_global_minimum(p: Problem, sol: Solution) -> None:
    """``sol.eta`` is at least as low as a multi-start search, both measured with this test's
    own m₃ (not the ``cubic_model`` of the code under test)."""
    best = global_minimum(p)
    value = m3(p, sol.eta.numpy())
    assert value <= best + 1e-9 * (1 + abs(best)), f"m3(η) = {value}, multi-start {best}"


# --------------------------------------------------------------------------------------------
# Characterisation on random problems


@CHECKS
@given(problems(ALL_KINDS))
def test_solution_is_stationary(p: Problem) -> None:
    sol = solve(p.summaries(), lam_int=p.lam)
    assert sol.status == CUBIC
    assert_stationary(p, sol)


@CHECKS
@given(problems(ALL_KINDS))
def test_shifted_hessian_is_positive_semidefinite(p: Problem) -> None:
    sol = solve(p.summaries(), lam_int=p.lam)
    M = shifted(p, sol.eta)
    # Jacobi-scaled, so badly scaled groups do not hide a negative eigenvalue.
    s = M.diagonal().abs().clamp_min(1e-300).rsqrt()
    assert float(torch.linalg.eigvalsh(s[:, None] * M * s[None, :])[0]) >= -1e-9


@CHECKS
@given(problems(ALL_KINDS))
def test_reported_r_and_model_value_match_eta(p: Problem) -> None:
    sol = solve(p.summaries(), lam_int=p.lam)
    assert sol.eta.dtype == DTYPE and sol.eta.shape == p.g.shape
    assert sol.r == pytest.approx(float(torch.linalg.vector_norm(p.d * sol.eta)), rel=1e-10)
    assert sol.model_value == pytest.approx(m3(p, sol.eta.numpy()), rel=1e-10, abs=1e-300)
    assert sol.model_value < 0  # g ≠ 0: the minimum is below m₃(0) = 0
    assert sol.dropped == ()


@SEARCHES
@given(problems(WELL_SCALED))
def test_solution_is_the_global_minimum(p: Problem) -> None:
    assert_global_minimum(p, solve(p.summaries(), lam_int=p.lam))


@pytest.mark.parametrize("seed", range(5))
def test_small_lam_tends_to_newton_for_positive_definite_h(seed: int) -> None:
    p = random_problem(seed, S=5, kind="pd", lam=1.0)
    newton = torch.linalg.solve(p.H, p.g)
    sol = solve(p.summaries(), lam_int=1e-9)
    assert_scaled_close(sol.eta, newton, rel=1e-6)


def test_lam_zero_gives_newton_status() -> None:
    p = random_problem(3, S=5, kind="pd", lam=0.0)
    sol = solve(p.summaries(), lam_int=0.0)
    assert sol.status == NEWTON
    assert sol.r == 0
    assert_scaled_close(sol.eta, torch.linalg.solve(p.H, p.g), rel=1e-12)


@pytest.mark.parametrize("kind", ["pd", "indefinite"])
def test_larger_lam_shrinks_the_step(kind: str) -> None:
    p = random_problem(4, S=6, kind=kind, lam=1.0)
    rs = [solve(p.summaries(), lam_int=lam).r for lam in (0.01, 0.1, 1.0, 10.0, 100.0)]
    assert all(a > b for a, b in itertools.pairwise(rs)), rs


# --------------------------------------------------------------------------------------------
# The spec's coupling example: η_N = (4.3, −3.7) from H ≻ 0


SPEC_H = t([[1.0, 0.9], [0.9, 1.0]])
SPEC_G = t([1.0, 0.2])


def test_spec_example_without_third_order_is_raw_newton() -> None:
    sol = solve(Summaries(g=SPEC_G, H=SPEC_H, d3=None))
    assert sol.status == NEWTON
    assert_scaled_close(sol.eta, t([0.82 / 0.19, -0.7 / 0.19]), rel=1e-12)
    assert sol.r == 0
    assert sol.model_value == pytest.approx(-0.5 * float(SPEC_G @ sol.eta), rel=1e-12)


def test_spec_example_with_third_order_is_the_cubic_minimiser() -> None:
    p = Problem(SPEC_H, SPEC_G, t([1.0, -1.0]), 1.0)
    sol = solve(p.summaries(), lam_int=1.0)
    assert sol.status == CUBIC
    assert_stationary(p, sol)
    assert_global_minimum(p, sol)


# --------------------------------------------------------------------------------------------
# Degenerate inputs: statuses instead of exceptions


def test_zero_direction_group_is_dropped_with_zero_eta() -> None:
    full = random_problem(5, S=4, kind="indefinite", lam=1.0)
    H, g, d3 = full.H.clone(), full.g.clone(), full.d3.clone()
    H[1, :] = 0
    H[:, 1] = 0
    g[1] = 0
    d3[1] = 0
    keep = [0, 2, 3]
    sol = solve(Summaries(g=g, H=H, d3=d3))
    reduced = solve(Summaries(g=g[keep], H=H[keep][:, keep], d3=d3[keep]))
    assert sol.dropped == (1,)
    assert sol.eta[1] == 0
    assert sol.status == reduced.status
    assert_scaled_close(sol.eta[keep], reduced.eta, rel=1e-12)


def test_all_groups_idle_gives_empty_status() -> None:
    sol = solve(
        Summaries(
            g=torch.zeros(3, dtype=DTYPE),
            H=torch.zeros(3, 3, dtype=DTYPE),
            d3=torch.zeros(3, dtype=DTYPE),
        )
    )
    assert sol.status == EMPTY
    assert torch.equal(sol.eta, torch.zeros(3, dtype=DTYPE))
    assert sol.dropped == (0, 1, 2)


@pytest.mark.parametrize("d3", [None, "zeros"])
def test_no_third_order_term_with_positive_definite_h_gives_newton(d3: str | None) -> None:
    p = random_problem(6, S=5, kind="pd", lam=1.0)
    third = None if d3 is None else torch.zeros(5, dtype=DTYPE)
    sol = solve(Summaries(g=p.g, H=p.H, d3=third))
    assert sol.status == NEWTON
    assert sol.r == 0
    assert_scaled_close(sol.eta, torch.linalg.solve(p.H, p.g), rel=1e-12)


def assert_levenberg_step(H: Tensor, g: Tensor, eta: Tensor) -> None:
    """η = (H + μ·Diag|H_ss|)⁻¹ g for one μ > 0 that makes the shifted matrix PD."""
    assert torch.isfinite(eta).all()
    assert float(g @ eta) > 0, "a Levenberg step is a descent direction for the model"
    scale = H.diagonal().abs()
    big = eta.abs() > 1e-6 * float(eta.abs().max())
    mu = ((g - H @ eta) / (scale * eta))[big]
    assert float(mu.min()) > 0
    assert_scaled_close(mu, torch.full_like(mu, float(mu.mean())), rel=1e-8, what="μ")
    shifted_h = H + float(mu.mean()) * torch.diag(scale)
    assert float(torch.linalg.eigvalsh(shifted_h)[0]) > 0


@pytest.mark.parametrize("d3", [None, "zeros"])
def test_no_third_order_term_with_indefinite_h_gives_levenberg(d3: str | None) -> None:
    p = random_problem(7, S=5, kind="indefinite", lam=1.0)
    third = None if d3 is None else torch.zeros(5, dtype=DTYPE)
    sol = solve(Summaries(g=p.g, H=p.H, d3=third))
    assert sol.status == LEVENBERG
    assert_levenberg_step(p.H, p.g, sol.eta)


def test_negative_curvature_where_d_vanishes_gives_levenberg() -> None:
    # m₃ is unbounded below along e₀: H₀₀ < 0 and d₀ = 0.
    H, g, d3 = t([[-1.0, 0.2], [0.2, 2.0]]), t([0.5, 1.0]), t([0.0, 1.0])
    sol = solve(Summaries(g=g, H=H, d3=d3))
    assert sol.status == LEVENBERG
    assert_levenberg_step(H, g, sol.eta)
    assert sol.model_value == pytest.approx(m3(Problem(H, g, d3, 1.0), sol.eta.numpy()), rel=1e-12)


@pytest.mark.parametrize("h", [2.0, -2.0, 0.0])
@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_one_group_step_is_the_positive_root_of_the_cubic(h: float, lam: float) -> None:
    # m₃(η) = −gη + ½hη² + (λ/6)d³|η|³ with g > 0: η > 0 solves −g + hη + (λ/2)d³η² = 0.
    g, d3 = 0.8, 1.7
    sol = solve(Summaries(g=t([g]), H=t([[h]]), d3=t([d3])), lam_int=lam)
    expected = (-h + math.sqrt(h * h + 2 * lam * d3 * g)) / (lam * d3)
    assert sol.status == CUBIC
    assert float(sol.eta[0]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("H", "g"),
    [
        ([[0.0, 0.0], [0.0, 2.0]], [1.0, 1.0]),  # a group with zero curvature but ḡ ≠ 0
        ([[1.0, 1.0], [1.0, 1.0]], [1.0, 0.0]),  # PSD, g outside the range of H
        ([[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0]),  # PSD, g inside the range of H
    ],
    ids=["zero-curvature-group", "g-outside-range", "g-in-range"],
)
def test_singular_positive_semidefinite_h_gives_the_cubic_minimiser(
    H: list[list[float]], g: list[float]
) -> None:
    p = Problem(t(H), t(g), t([1.0, 2.0]), 1.0)
    sol = solve(p.summaries())
    assert sol.status == CUBIC
    assert_stationary(p, sol)
    assert_global_minimum(p, sol)


# --------------------------------------------------------------------------------------------
# Hard case: g ⟂ the eigenvector of the most negative eigenvalue, equal d


HARD_H = t([[-1.0, 0.0, 0.0], [0.0, 2.0, 0.5], [0.0, 0.5, 1.5]])
HARD_G = t([0.0, 0.3, -0.2])
HARD_D3 = t([1.0, 1.0, 1.0])


def test_hard_case_returns_a_global_minimiser() -> None:
    p = Problem(HARD_H, HARD_G, HARD_D3, 1.0)
    sol = solve(p.summaries())
    # r₀ = (2/λ)·(−λ_min) = 2; M(r₀) = H + I is singular along e₀ and ‖M(r₀)⁺g‖ < 2.
    y = torch.linalg.solve(HARD_H[1:, 1:] + torch.eye(2, dtype=DTYPE), HARD_G[1:])
    assert sol.status == HARD_CASE
    assert sol.r == pytest.approx(2.0, rel=1e-10)
    assert_scaled_close(sol.eta[1:], y, rel=1e-10)
    assert float(sol.eta[0]) ** 2 == pytest.approx(4.0 - float(y @ y), rel=1e-10)
    assert_stationary(p, sol)
    assert_global_minimum(p, sol)


def test_rotated_hard_case_returns_a_global_minimiser() -> None:
    # The same problem in a rotated basis: g ⟂ v_min holds only up to rounding.
    Q, _ = torch.linalg.qr(
        torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    )
    p = Problem(Q @ HARD_H @ Q.T, Q @ HARD_G, HARD_D3, 1.0)
    sol = solve(p.summaries())
    assert sol.status in (HARD_CASE, CUBIC)
    assert float(torch.linalg.vector_norm(sol.eta)) == pytest.approx(2.0, rel=1e-6)
    assert_global_minimum(p, sol)


# --------------------------------------------------------------------------------------------
# Per-group rescaling (docs/method.md §5): (Λg, ΛHΛ, Λ³d3) with Λ = Diag(a_s²) gives η' = Λ⁻¹η,
# whatever the branch that produced η


def rescaling_cases() -> dict[str, tuple[Summaries, SolveStatus]]:
    pd, indefinite = random_problem(9, 4, "pd", 1.0), random_problem(9, 4, "indefinite", 1.0)
    zeros = torch.zeros(4, dtype=DTYPE)
    return {
        "cubic": (indefinite.summaries(), CUBIC),
        "newton": (Summaries(g=pd.g, H=pd.H, d3=None), NEWTON),
        "levenberg": (Summaries(g=indefinite.g, H=indefinite.H, d3=zeros), LEVENBERG),
        "hard_case": (Summaries(g=HARD_G, H=HARD_H, d3=HARD_D3), HARD_CASE),
    }


@pytest.mark.parametrize("branch", ["cubic", "newton", "levenberg", "hard_case"])
def test_per_group_rescaling_divides_eta_by_the_scale(branch: str) -> None:
    summ, status = rescaling_cases()[branch]
    lam = t([0.01, 9.0, 4.0, 100.0])[: summ.g.shape[0]]  # a_s² for a = (0.1, 3, −2, 10)
    d3 = None if summ.d3 is None else lam**3 * summ.d3
    scaled = Summaries(g=lam * summ.g, H=lam[:, None] * summ.H * lam[None, :], d3=d3)
    sol, sol_scaled = solve(summ), solve(scaled)
    assert sol.status == sol_scaled.status == status
    if branch == "hard_case":  # two minimisers ±τ along e₀: compare up to that sign
        assert_scaled_close(sol_scaled.eta[1:] * lam[1:], sol.eta[1:], rel=1e-9)
        assert abs(float(sol_scaled.eta[0] * lam[0])) == pytest.approx(abs(float(sol.eta[0])))
    else:
        assert_scaled_close(sol_scaled.eta * lam, sol.eta, rel=1e-9)
    assert sol_scaled.model_value == pytest.approx(sol.model_value, rel=1e-9)


# --------------------------------------------------------------------------------------------
# Inputs and the model function


@pytest.mark.parametrize("field", ["g", "H", "d3"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_input_raises_value_error(field: str, bad: float) -> None:
    p = random_problem(8, S=3, kind="pd", lam=1.0)
    values = {"g": p.g.clone(), "H": p.H.clone(), "d3": p.d3.clone()}
    values[field].view(-1)[0] = bad
    with pytest.raises(ValueError):
        solve(Summaries(**values))


def test_cubic_model_is_the_anisotropic_cubic() -> None:
    H, g, d3, eta = t([[1.0, 0.0], [0.0, 1.0]]), t([1.0, 0.0]), t([8.0, -1.0]), t([1.0, 2.0])
    # −1 + ½·5 + (2/6)·‖(2·1, 1·2)‖³
    expected = -1.0 + 2.5 + 2.0 / 6 * math.sqrt(8.0) ** 3
    assert cubic_model(H, g, d3, eta, lam_int=2.0) == pytest.approx(expected, rel=1e-14)
