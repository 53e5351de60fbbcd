"""Variance-preserving SDE (Song et al. 2021; the continuous limit of DDPM, Ho et al. 2020).

    β(t) = β_min + t (β_max − β_min),   dx = −½ β(t) x dt + √β(t) dW,
    log α(t) = −¼ t² (β_max − β_min) − ½ t β_min,   σ(t)² = 1 − α(t)².
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._checks import horizon, positive
from .base import LinearSDE


class VPSDE(LinearSDE):
    """VP SDE with the linear β schedule of DDPM."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, eps: float = 1e-3):
        self.beta_min = positive(beta_min, "beta_min")
        self.beta_max = positive(beta_max, "beta_max")
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min, got beta_min={beta_min}, beta_max={beta_max}")
        self.T, self.eps = horizon(T, eps)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2 * self._log_alpha(t)))

    def _f(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def _g2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        # α² = sigmoid(2λ)  ⇒  m := −log α = ½ softplus(−2λ); solve ¼Δt² + ½β_min t = m (stable root).
        m = 0.5 * torch.nn.functional.softplus(-2 * lam)
        delta = self.beta_max - self.beta_min
        return 2 * m / (0.5 * self.beta_min + torch.sqrt(0.25 * self.beta_min**2 + delta * m))

    @property
    def prior_std(self) -> float:
        return 1.0

    def discretize(self, n: int) -> "DiscreteVPSDE":
        """DDPM's discrete schedule: β_i = β_min/N + i (β_max − β_min)/(N (N − 1)), i = 0…N−1."""
        from .discrete import DiscreteVPSDE

        if int(n) != n or n < 2:
            raise ValueError(f"n must be an integer >= 2, got {n}")
        n = int(n)
        i = torch.arange(n, dtype=torch.float64)
        betas = self.beta_min / n + i * (self.beta_max - self.beta_min) / (n * (n - 1))
        return DiscreteVPSDE(betas)
