"""Variance-exploding SDE (Song & Ermon 2019; Song et al. 2021):

    σ(t) = σ_min (σ_max/σ_min)^t,   dx = σ(t) √(2 log(σ_max/σ_min)) dW,   α = 1.

As in score_sde, σ(0) = σ_min: the data is taken to carry σ_min of noise already.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import horizon, positive
from .base import LinearSDE


class VESDE(LinearSDE):
    """VE SDE with a geometric noise schedule."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, eps: float = 1e-5):
        self.sigma_min = positive(sigma_min, "sigma_min")
        self.sigma_max = positive(sigma_max, "sigma_max")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.T, self.eps = horizon(T, eps)

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min) / self.T

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return math.log(self.sigma_min) + t * self._log_ratio

    def _f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _g2(self, t: Tensor) -> Tensor:
        return 2 * self._log_ratio * (2 * self._log_sigma(t)).exp()

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    @property
    def prior_std(self) -> float:
        return self.sigma_max
