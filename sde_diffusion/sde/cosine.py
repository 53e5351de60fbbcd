"""Cosine VP schedule (Nichol & Dhariwal 2021, "Improved DDPM"), in continuous time:

    ᾱ(t) = cos²(θ(t)) / cos²(θ(0)),   θ(t) = (t + s)/(1 + s) · π/2,   α = √ᾱ,   σ² = 1 − ᾱ,
    f = d log α/dt = −(π / (2(1 + s))) tan θ(t),   g² = −2 f.

α(1) = 0 makes λ(1) = −∞, so T defaults to 0.9946 as in DPM-Solver (Lu et al. 2022).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import horizon, positive
from .base import LinearSDE


class CosineVPSDE(LinearSDE):
    """Variance-preserving SDE with the cosine ᾱ schedule."""

    def __init__(self, s: float = 0.008, T: float = 0.9946, eps: float = 1e-3):
        self.s = positive(s, "s")
        self.T, self.eps = horizon(T, eps)
        if self.T >= 1.0:
            raise ValueError(f"T must be < 1 for the cosine schedule (α(1) = 0), got {T}")

    def _theta(self, t: Tensor) -> Tensor:
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def _log_alpha(self, t: Tensor) -> Tensor:
        # α = cos(θ0 + δ)/cos θ0 = 1 − 2 sin²(δ/2) − tan θ0 sin δ with δ = θ(t) − θ(0): exact at t = 0
        # (log cos θ(t) − log cos θ0 rounds to ±1e-19 there, which made σ(0) NaN) and accurate for small t.
        delta = t / (1 + self.s) * (math.pi / 2)
        tan0 = math.tan(self.s / (1 + self.s) * math.pi / 2)
        return torch.log1p(-2 * torch.sin(0.5 * delta) ** 2 - tan0 * torch.sin(delta)).clamp_max(0.0)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2 * self._log_alpha(t)))

    def _f(self, t: Tensor) -> Tensor:
        return -(math.pi / (2 * (1 + self.s))) * torch.tan(self._theta(t))

    def _g2(self, t: Tensor) -> Tensor:
        return -2 * self._f(t)

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        log_alpha = 0.5 * torch.nn.functional.logsigmoid(2 * lam)
        cos0 = math.cos(self.s / (1 + self.s) * math.pi / 2)
        theta = torch.arccos((log_alpha.exp() * cos0).clamp(-1, 1))
        return theta * 2 * (1 + self.s) / math.pi - self.s

    @property
    def prior_std(self) -> float:
        return 1.0
