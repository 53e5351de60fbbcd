"""Ancestral sampling from the posterior q(x_s | x_t, x̂_0) (Ho et al. 2020, Algorithm 2).

With the forward kernel x_t = α_{t|s} x_s + σ_{t|s} z, the DDPM step on any grid and any linear SDE is

    x_s = (x_t − σ²_{t|s}/σ_t · ε_θ(x_t, t)) / α_{t|s} + √β̃ z,    β̃ = σ²_{t|s} σ_s² / σ_t²,

(on a DDPM schedule: x_{t−1} = (x_t − β_t/√(1 − ᾱ_t) ε_θ)/√α_t + σ_t z with σ_t² = β̃_t, "fixed_small").
The mean equals the posterior mean μ̃ = (α_s σ²_{t|s} x̂_0 + α_{t|s} σ_s² x_t)/σ_t² with x̂_0 plugged in.
No noise is drawn where β̃ = 0 (the final step to t = 0), as in diffusers.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..sde import LinearSDE
from .base import FixedStepSampler, Interval, SamplingContext
from .grids import GridLike, make_grid


def ancestral_step(ctx: SamplingContext, x: Tensor, iv: Interval) -> Tensor:
    eps = ctx.eps(x, iv.t)
    x = (x - (iv.var_ts / iv.sigma_t) * eps) / iv.alpha_ts
    posterior_var = iv.var_ts * iv.sigma_s**2 / iv.sigma_t**2
    return x + math.sqrt(posterior_var) * ctx.noise(x) if posterior_var > 0 else x


class DDPM(FixedStepSampler):
    """DDPM ancestral sampler. ``steps=None`` walks every step of a :class:`DiscreteVPSDE`
    (N network evaluations; its last step, at i = 0, is the x̂_0 denoise) or 1000 uniform steps otherwise.
    """

    name = "ddpm"

    def __init__(self, steps: Optional[int] = None, grid: GridLike = "uniform", denoise: bool = True, thresholding=None):
        super().__init__(steps=1000 if steps is None else steps, grid=grid, denoise=denoise, thresholding=thresholding)
        self._native_steps = steps is None

    def times(self, sde: LinearSDE) -> torch.Tensor:
        if self._native_steps and sde.num_steps is not None and not isinstance(self.grid, torch.Tensor):
            return make_grid("uniform", sde, sde.num_steps - 1)  # t_i = (i + 1)/N, i = N−1 … 0
        return super().times(sde)

    def step(self, ctx: SamplingContext, x: Tensor, interval: Interval) -> Tensor:
        return ancestral_step(ctx, x, interval)
