"""Exponential-integrator arithmetic in the log-SNR λ = log(α/σ), shared by DPM-Solver, UniPC and the adaptive solver.

With h = λ_s − λ_t and the data prediction x̂_0(λ) expanded in a Taylor series around λ_t, the
probability-flow ODE (η = 0) and the reverse SDE (η = 1) have the exact variation-of-constants form
(Lu et al. 2022, "DPM-Solver++", §3 and §5; η ∈ (0, 1) interpolates as in k-diffusion's dpmpp_2m_sde):

    x_s = (σ_s/σ_t) e^{−ηh} x_t + α_s Σ_k (1+η) h^{k+1} φ_{k+1}(−(1+η)h) x̂_0^{(k)}(λ_t) + σ_s √(1 − e^{−2ηh}) z,

and with the noise prediction ε̂(λ) (Lu et al. 2022, "DPM-Solver", eq. 3.4, η = 0):

    x_s = (α_s/α_t) x_t − σ_s Σ_k h^{k+1} φ_{k+1}(h) ε̂^{(k)}(λ_t),

where φ_1(z) = (e^z − 1)/z, φ_{k+1}(z) = (φ_k(z) − 1/k!)/z. The derivatives x̂_0^{(k)} are estimated
from earlier evaluations (multistep) or intermediate ones (singlestep) by divided differences in λ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ..sde import LinearSDE

PREDICTION_TARGETS = ("x0", "eps")


_INV_FACTORIAL = [1.0 / math.factorial(j) for j in range(40)]


def phi(k: int, z: float) -> float:
    """φ_k(z) = Σ_j z^j/(j+k)!, by its series near 0 (where the recursion cancels) and by the recursion elsewhere."""
    if abs(z) < 0.05:
        return sum(z**j * _INV_FACTORIAL[j + k] for j in range(14))
    value = math.expm1(z) / z
    for j in range(1, k):
        value = (value - _INV_FACTORIAL[j]) / z
    return value


@dataclass(frozen=True)
class Point:
    """Schedule at one time: t, α, σ, λ (float64 numbers)."""

    t: float
    alpha: float
    sigma: float
    lam: float

    @classmethod
    def at_time(cls, sde: LinearSDE, t: float) -> "Point":
        tt = torch.tensor(t, dtype=torch.float64)
        log_alpha, log_sigma = float(sde._log_alpha(tt)), float(sde._log_sigma(tt))
        return cls(t, math.exp(log_alpha), math.exp(log_sigma), log_alpha - log_sigma)

    @classmethod
    def at_log_snr(cls, sde: LinearSDE, lam: float) -> "Point":
        t = float(sde._t_of_log_snr(torch.tensor(lam, dtype=torch.float64)))
        return cls.at_time(sde, min(max(t, 0.0), sde.T))


def taylor_coefficients(start: Point, end: Point, order: int, prediction: str, eta: float = 0.0) -> Tuple[float, List[float], float]:
    """(linear factor on x_t, coefficients of x̂^{(k)} for k < order, noise std) for the step start → end."""
    h = end.lam - start.lam
    if prediction == "x0":
        rate = 1.0 + eta
        linear = (end.sigma / start.sigma) * math.exp(-eta * h)
        coefs = [end.alpha * rate * h ** (k + 1) * phi(k + 1, -rate * h) for k in range(order)]
        noise = end.sigma * math.sqrt(-math.expm1(-2.0 * eta * h)) if eta > 0 else 0.0
        return linear, coefs, noise
    linear = end.alpha / start.alpha
    return linear, [-end.sigma * h ** (k + 1) * phi(k + 1, h) for k in range(order)], 0.0


def derivatives(lams: Sequence[float], values: Sequence[Tensor]) -> List[Tensor]:
    """Value and derivatives in λ at lams[0] of the polynomial through (lams[j], values[j]) (up to 3 points).

    Newton divided differences: p'(λ_0) = [y0,y1] + (λ_0 − λ_1)[y0,y1,y2],  p''(λ_0) = 2 [y0,y1,y2].
    """
    y0 = values[0]
    if len(values) == 1:
        return [y0]
    d01 = (y0 - values[1]) / (lams[0] - lams[1])
    if len(values) == 2:
        return [y0, d01]
    d12 = (values[1] - values[2]) / (lams[1] - lams[2])
    d012 = (d01 - d12) / (lams[0] - lams[2])
    return [y0, d01 + (lams[0] - lams[1]) * d012, 2.0 * d012]


def exp_update(
    x: Tensor, start: Point, end: Point, terms: Sequence[Tensor], prediction: str, eta: float = 0.0, midpoint: bool = False
) -> Tuple[Tensor, float]:
    """One exponential-integrator step start → end with the Taylor terms [D_0, D_1, …]; returns (x, noise std).

    ``midpoint`` swaps the second-order weight h²φ₂ for DPM-Solver's original (h/2)·(first-order weight).
    """
    linear, coefs, noise_std = taylor_coefficients(start, end, len(terms), prediction, eta)
    if midpoint and len(terms) == 2:
        coefs[1] = coefs[0] * (end.lam - start.lam) / 2
    return combine(x, linear, coefs, terms), noise_std


def combine(x: Tensor, linear: float, coefs: Sequence[float], terms: Sequence[Tensor]) -> Tensor:
    """linear · x + Σ_k coefs[k] · terms[k]."""
    out = linear * x
    for c, term in zip(coefs, terms):
        out = out + c * term
    return out


def step_order(order: int, i: int, steps: int, lower_order_final: bool) -> int:
    """Order of multistep step i of ``steps``: warm-up from 1, and lower at the end of short runs (< 15 steps),
    as DPM-Solver's and diffusers' ``lower_order_final``."""
    k = min(order, i + 1)
    if lower_order_final and steps < 15:
        k = min(k, steps - i)
    return k
