"""DDIM (Song, Meng & Ermon 2021, eq. 12) for any linear SDE:

    x̂_0, ε̂ from one evaluation at t,   c = η √β̃,   β̃ = σ²_{t|s} σ_s²/σ_t²,
    x_s = α_s x̂_0 + √(σ_s² − c²) ε̂ + c z.

η = 0 is deterministic (the first-order probability-flow solver in λ); η = 1 is DDPM ancestral sampling.
"""
from __future__ import annotations

import math

from torch import Tensor

from .base import FixedStepSampler, Interval, SamplingContext
from .grids import GridLike


class DDIM(FixedStepSampler):
    """DDIM with stochasticity η ∈ [0, 1] (default deterministic)."""

    name = "ddim"

    def __init__(self, steps: int = 50, eta: float = 0.0, grid: GridLike = "uniform", denoise: bool = True, thresholding=None):
        super().__init__(steps=steps, grid=grid, denoise=denoise, thresholding=thresholding)
        eta = float(eta)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        self.eta = eta

    def step(self, ctx: SamplingContext, x: Tensor, iv: Interval) -> Tensor:
        pred = ctx.predict(x, iv.t)
        if self.eta == 0:
            return iv.alpha_s * pred.x0 + iv.sigma_s * pred.eps
        c = self.eta * math.sqrt(iv.var_ts * iv.sigma_s**2 / iv.sigma_t**2)
        x = iv.alpha_s * pred.x0 + math.sqrt(max(iv.sigma_s**2 - c**2, 0.0)) * pred.eps
        return x + c * ctx.noise(x) if c > 0 else x
