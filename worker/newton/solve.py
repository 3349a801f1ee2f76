"""The cubic-regularised Newton rule that turns summaries into one η per group
(docs/method.md §3.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import torch
from torch import Tensor

# Relative thresholds on dimensionless quantities (eigenvalues of scaled matrices, entries
# relative to the largest): they keep the rule invariant to per-group and loss rescaling.
_ZERO = 1e-14
_PD = 1e-12


class SolveStatus(StrEnum):
    CUBIC = "cubic"  # the cubic-regularised minimiser (the normal case)
    NEWTON = "newton"  # H̄ ≻ 0 and the cubic term is inactive (d3 ≡ 0, None or lam_int = 0)
    HARD_CASE = "hard_case"  # ḡ orthogonal to the critical eigenvector: minimiser built directly
    LEVENBERG = "levenberg"  # the model has no minimiser: Levenberg step H̄ + μ·Diag|H̄|
    EMPTY = "empty"  # no group moves the loss


class HasSummaries(Protocol):
    @property
    def g(self) -> Tensor: ...
    @property
    def H(self) -> Tensor: ...
    @property
    def d3(self) -> Tensor | None: ...


@dataclass(frozen=True)
class Solution:
    """η for every group (0 for dropped ones) and how it was obtained.

    ``r = ‖Dη‖`` at the solution; ``model_value = m₃(η)`` (negative: a predicted decrease);
    ``dropped`` lists groups whose direction does not move the loss (ḡ_s = 0, H̄ row = 0);
    ``shift`` is the Levenberg μ when that fallback was used.
    """

    eta: Tensor
    status: SolveStatus
    r: float = 0.0
    dropped: tuple[int, ...] = ()
    model_value: float = 0.0
    lam_int: float = 1.0
    shift: float = 0.0


def cubic_model(
    H: Tensor, g: Tensor, d3: Tensor | None, eta: Tensor, lam_int: float = 1.0
) -> float:
    """``m₃(η) = −ḡᵀη + ½ηᵀH̄η + (λ/6)‖Dη‖³`` with ``D = Diag(|d3|^(1/3))``."""
    H, g, eta = H.double(), g.double(), eta.double()
    value = -g @ eta + 0.5 * eta @ H @ eta
    if d3 is not None:
        d = d3.double().abs().pow(1 / 3)
        value = value + lam_int / 6 * torch.linalg.vector_norm(d * eta) ** 3
    return float(value)


def solve(summaries: HasSummaries, lam_int: float = 1.0) -> Solution:
    """Global minimiser of the anisotropic cubic model ``m₃`` (docs/method.md §3.2).

    The minimiser satisfies ``(H̄ + (λ/2) r D²) η = ḡ`` with ``r = ‖Dη‖`` and
    ``H̄ + (λ/2) r D² ⪰ 0``; it is found by a safeguarded root search on
    ``φ(r) = ‖D (H̄ + (λ/2) r D²)⁻¹ ḡ‖ − r``, decreasing on ``(r_lo, ∞)``. ``λ = 0`` or ``d ≡ 0``
    gives Newton. Unlike the reference solver this never raises on indefinite ``H̄``, zero
    directions, unused groups, ``d ≡ 0`` or the hard case; the status says what happened.

    Args:
        summaries: anything with ``g`` (S,), ``H`` (S, S), ``d3`` (S,) or None.
        lam_int: weight λ of the cubic penalty, ≥ 0.

    Raises:
        ValueError: non-finite or mis-shaped inputs, negative ``lam_int``.
    """
    g, H = summaries.g.detach().double().cpu(), summaries.H.detach().double().cpu()
    d3 = summaries.d3
    d3 = torch.zeros_like(g) if d3 is None else d3.detach().double().cpu()
    _validate(g, H, d3, lam_int)
    H = 0.5 * (H + H.T)
    S = g.shape[0]
    scale_h = float(H.abs().max()) if S else 0.0
    scale_g = float(g.abs().max()) if S else 0.0
    idle = (H.abs().amax(dim=1) <= _ZERO * scale_h) & (g.abs() <= _ZERO * scale_g)
    dropped = tuple(int(i) for i in torch.nonzero(idle).flatten())
    active = ~idle
    eta = torch.zeros(S, dtype=torch.float64)
    if not bool(active.any()):
        return Solution(eta, SolveStatus.EMPTY, dropped=dropped, lam_int=lam_int)
    Ha, ga = H[active][:, active], g[active]
    da = d3[active].abs().pow(1 / 3)
    eta_a, status, r, shift = _solve_active(Ha, ga, da, lam_int)
    eta[active] = eta_a
    return Solution(
        eta=eta,
        status=status,
        r=r,
        dropped=dropped,
        model_value=cubic_model(H, g, d3, eta, lam_int),
        lam_int=lam_int,
        shift=shift,
    )


def _validate(g: Tensor, H: Tensor, d3: Tensor, lam_int: float) -> None:
    S = g.shape[0] if g.dim() == 1 else -1
    if S < 0 or H.shape != (S, S) or d3.shape != (S,):
        raise ValueError(
            f"expected g (S,), H (S, S), d3 (S,); got {tuple(g.shape)}, {tuple(H.shape)}, "
            f"{tuple(d3.shape)}"
        )
    if not (torch.isfinite(g).all() and torch.isfinite(H).all() and torch.isfinite(d3).all()):
        raise ValueError("summaries contain NaN or infinite values")
    if not math.isfinite(lam_int) or lam_int < 0:
        raise ValueError(f"lam_int must be finite and ≥ 0, got {lam_int}")


def _lambda_min(A: Tensor) -> float:
    return float(torch.linalg.eigvalsh(A)[0])


def _is_pd(A: Tensor) -> bool:
    """Positive definite after a Jacobi scaling, so the test is invariant to group rescaling."""
    diag = A.diagonal()
    if bool((diag <= 0).any()):
        return False
    s = diag.rsqrt()
    return _lambda_min(s[:, None] * A * s[None, :]) > _PD


def _solve_active(
    H: Tensor, g: Tensor, d: Tensor, lam: float
) -> tuple[Tensor, SolveStatus, float, float]:
    pd = _is_pd(H)
    cubic_on = lam > 0 and bool((d > 0).any())
    if not cubic_on:
        if pd:
            return torch.linalg.solve(H, g), SolveStatus.NEWTON, 0.0, 0.0
        return _levenberg(H, g)
    r_lo = 0.0 if pd else _critical_r(H, d, lam)
    if r_lo is None:  # negative curvature where the cubic term cannot act: unbounded below
        return _levenberg(H, g)
    D2 = torch.diag(d * d)

    def step(r: float) -> Tensor:
        solved: Tensor = torch.linalg.solve(H + 0.5 * lam * r * D2, g)
        return solved

    def phi(r: float) -> float:
        try:
            eta = step(r)
        except RuntimeError:  # exactly singular: the norm is infinite at a pole
            return math.inf
        value = float(torch.linalg.vector_norm(d * eta)) - r
        return value if math.isfinite(value) else math.inf

    a = r_lo * (1 + 1e-12)
    phi_a = phi(a)  # guarded: a singular H̄ (PSD, r_lo = 0) gives inf, not an exception
    if phi_a <= 0:
        if pd:  # Dη_N = 0: the cubic term vanishes at the Newton step
            return torch.linalg.solve(H, g), SolveStatus.NEWTON, 0.0, 0.0
        return _hard_case(H, g, d, lam, r_lo)
    b = max(2 * r_lo, 1.0)
    while phi(b) >= 0:
        b *= 4
    r = _root(phi, a, b, phi_a)
    return step(r), SolveStatus.CUBIC, r, 0.0


def _critical_r(H: Tensor, d: Tensor, lam: float) -> float | None:
    """Smallest r ≥ 0 with ``H + (λ/2) r D² ⪰ 0``, or None if no r makes it so."""
    if bool((d > 0).all()):
        scaled = H / d[:, None] / d[None, :]
        return 2 / lam * max(0.0, -_lambda_min(scaled))
    flat = d == 0
    if not _is_pd(H[flat][:, flat]):
        return None
    D2 = torch.diag(d * d)

    def lmin(c: float) -> float:
        return _lambda_min(H + c * D2)

    hi = 1.0
    while lmin(hi) <= 0:
        hi *= 4
        if hi > 1e300:
            return None
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if lmin(mid) <= 0 else (lo, mid)
        if hi - lo <= 1e-15 * hi:
            break
    return 2 * hi / lam


def _root(phi, a: float, b: float, phi_a: float) -> float:  # type: ignore[no-untyped-def]
    """Root of a decreasing function on [a, b] with φ(a) > 0 > φ(b): Illinois regula falsi,
    falling back to bisection when it stalls; converges to full float64 precision."""
    fa, fb = phi_a, phi(b)
    side = 0
    for _ in range(300):
        if not (math.isfinite(fa) and math.isfinite(fb)) or fa - fb == 0:
            c = 0.5 * (a + b)
        else:
            c = b - fb * (b - a) / (fb - fa)
            if not a < c < b:
                c = 0.5 * (a + b)
        fc = phi(c)
        if fc > 0:
            a, fa = c, fc
            if side == 1:
                fb *= 0.5
            side = 1
        else:
            b, fb = c, fc
            if side == -1:
                fa *= 0.5
            side = -1
        if b - a <= 4e-16 * max(b, 1e-300) or fc == 0:
            break
    return 0.5 * (a + b) if fc != 0 else c


def _hard_case(
    H: Tensor, g: Tensor, d: Tensor, lam: float, r: float
) -> tuple[Tensor, SolveStatus, float, float]:
    """ḡ ⟂ the critical eigenvector: η = M⁺ḡ + τz with ‖Dη‖ = r, M = H + (λ/2) r D² singular."""
    M = H + 0.5 * lam * r * torch.diag(d * d)
    evals, evecs = torch.linalg.eigh(M)
    tol = _PD * float(evals.abs().max())
    keep = evals > tol
    base = evecs[:, keep] @ ((evecs[:, keep].T @ g) / evals[keep])
    z = evecs[:, 0]
    dz, db = d * z, d * base
    a2, b1, c0 = float(dz @ dz), 2 * float(db @ dz), float(db @ db) - r * r
    if a2 <= _ZERO:
        return _levenberg(H, g)
    disc = math.sqrt(max(b1 * b1 - 4 * a2 * c0, 0.0))
    candidates = [base + ((-b1 + sign * disc) / (2 * a2)) * z for sign in (1.0, -1.0)]
    best = max(candidates, key=lambda e: float(e.sum()))  # equal model values: prefer larger ηs
    return best, SolveStatus.HARD_CASE, r, 0.0


def _levenberg(H: Tensor, g: Tensor) -> tuple[Tensor, SolveStatus, float, float]:
    """Levenberg step ``(H + μ·Diag|H_ss|)⁻¹ ḡ`` with μ twice the shift that makes it PD."""
    diag = H.diagonal().abs()
    floor = _PD * float(diag.max()) if float(diag.max()) > 0 else 1.0
    scale = diag.clamp_min(floor)
    s = scale.rsqrt()
    mu = max(2 * -_lambda_min(s[:, None] * H * s[None, :]), 1e-6)
    return torch.linalg.solve(H + mu * torch.diag(scale), g), SolveStatus.LEVENBERG, 0.0, mu
