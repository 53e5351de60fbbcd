"""DDPM's discrete schedule as a continuous-time linear SDE (Ho et al. 2020).

Step i = 0…N−1 (0-based, as diffusers counts) sits at t_i = (i + 1)/N with α(t_i)² = ᾱ_i = Π_{j≤i}(1 − β_j);
t = 0 has α = 1. Between the knots log α is linear, so f = d log α/dt is piecewise constant,
σ² = 1 − α² and g² = −2f: every continuous-time sampler runs on a DDPM schedule too.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor

from .._checks import TimeLike, positive
from .base import LinearSDE


class DiscreteVPSDE(LinearSDE):
    """A DDPM β schedule; ``DiscreteVPSDE.linear()`` is DDPM's linspace(1e-4, 0.02, 1000)."""

    def __init__(self, betas: Union[Tensor, Sequence[float]]):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.dim() != 1 or betas.numel() < 2:
            raise ValueError(f"betas must be a 1-d sequence of at least 2 values, got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all():
            raise ValueError("betas contains NaN or Inf")
        if not ((betas > 0) & (betas < 1)).all():
            raise ValueError(f"betas must lie in (0, 1), got values in [{float(betas.min()):.6g}, {float(betas.max()):.6g}]")
        if (betas[1:] < betas[:-1]).any():
            i = int(torch.nonzero(betas[1:] < betas[:-1])[0])
            raise ValueError(f"betas must be non-decreasing, but betas[{i + 1}]={float(betas[i + 1]):.6g} < betas[{i}]={float(betas[i]):.6g}")
        self.betas = betas
        self.num_steps = betas.numel()
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.T = 1.0
        self.eps = 1.0 / self.num_steps
        # knots t = 0, 1/N, …, 1 and log α there (log α(0) = 0)
        self._knot_log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.cumsum(torch.log1p(-betas), 0)])

    # ----- constructors -----
    @classmethod
    def linear(cls, n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "DiscreteVPSDE":
        """DDPM's linear schedule β_i = linspace(beta_start, beta_end, n)."""
        n = _steps(n)
        positive(beta_start, "beta_start")
        positive(beta_end, "beta_end")
        return cls(torch.linspace(beta_start, beta_end, n, dtype=torch.float64))

    @classmethod
    def cosine(cls, n: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "DiscreteVPSDE":
        """Improved-DDPM's cosine schedule (diffusers' "squaredcos_cap_v2")."""
        n = _steps(n)
        positive(s, "s")
        if not 0 < max_beta < 1:
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")

        def alpha_bar(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        return cls([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)])

    # ----- DDPM indices -----
    def step_time(self, i: Union[int, Tensor]) -> Tensor:
        """t_i = (i + 1)/N for step index i."""
        return (torch.as_tensor(i, dtype=torch.float64) + 1) / self.num_steps

    def step_index(self, t: TimeLike) -> Tensor:
        """i = round(N t − 1): the DDPM step a network trained on integer steps expects at time t."""
        t64 = self._time(t)
        return torch.round(t64 * self.num_steps - 1).clamp(0, self.num_steps - 1).long()

    # ----- schedule -----
    def _segment(self, t: Tensor) -> Tensor:
        """Index k of the segment (k/N, (k+1)/N] containing t (t = 0 → segment 0)."""
        return torch.ceil(t * self.num_steps - 1e-9).clamp(1, self.num_steps).long() - 1

    def _log_alpha(self, t: Tensor) -> Tensor:
        knots = self._knot_log_alpha.to(t.device)
        k = self._segment(t)
        u = t * self.num_steps - k
        return knots[k] + u * (knots[k + 1] - knots[k])

    def _log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2 * self._log_alpha(t)))

    def _f(self, t: Tensor) -> Tensor:
        knots = self._knot_log_alpha.to(t.device)
        k = self._segment(t)
        return (knots[k + 1] - knots[k]) * self.num_steps

    def _g2(self, t: Tensor) -> Tensor:
        return -2 * self._f(t)

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        target = 0.5 * torch.nn.functional.logsigmoid(2 * lam)  # log α where λ = lam
        ascending = -self._knot_log_alpha.to(lam.device)
        k = (torch.searchsorted(ascending, -target.contiguous()) - 1).clamp(0, self.num_steps - 1)
        lo, hi = ascending[k], ascending[k + 1]
        return (k + (-target - lo) / (hi - lo)) / self.num_steps

    @property
    def prior_std(self) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"DiscreteVPSDE(num_steps={self.num_steps}, beta_0={float(self.betas[0]):.4g}, beta_N-1={float(self.betas[-1]):.4g})"


def _steps(n: int) -> int:
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n}")
    return int(n)
