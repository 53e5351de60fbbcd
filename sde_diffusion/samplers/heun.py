"""EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2), in σ̃ = σ_t/α_t and x̃ = x/α_t.

With the denoiser D(x̃, σ̃) = x̂_0(α(t) x̃, t) at the time t where σ_t/α_t = σ̃, each step from σ̃_i to σ̃_{i+1}:

    γ = min(S_churn/N, √2 − 1) if S_tmin ≤ σ̃_i ≤ S_tmax else 0;   σ̂ = (1 + γ) σ̃_i
    x̂ = x̃_i + √(σ̂² − σ̃_i²) S_noise z                                   (churn: add noise)
    d = (x̂ − D(x̂, σ̂))/σ̂;   x̃' = x̂ + (σ̃_{i+1} − σ̂) d                  (Euler)
    x̃_{i+1} = x̂ + (σ̃_{i+1} − σ̂) (d + (x̃' − D(x̃', σ̃_{i+1}))/σ̃_{i+1}) / 2   (trapezoidal correction)

Two evaluations per step; EDM's final Euler step to σ̃ = 0 is the sampler's final denoise.
With S_churn = 0 it is the deterministic second-order Heun method on the probability-flow ODE.
"""
from __future__ import annotations

import math

from torch import Tensor

from .base import FixedStepSampler, Interval, SamplingContext
from .exponential import Point
from .grids import GridLike


class Heun(FixedStepSampler):
    """EDM Heun (2nd order) with optional churn; default grid: Karras ρ = 7."""

    name = "heun"

    def __init__(
        self,
        steps: int = 18,
        grid: GridLike = "karras",
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        denoise: bool = True,
        thresholding=None,
    ):
        super().__init__(steps=steps, grid=grid, denoise=denoise, thresholding=thresholding)
        for name, value in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
            if not float(value) >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not float(s_tmax) >= float(s_tmin):
            raise ValueError(f"s_tmax must be >= s_tmin, got s_tmin={s_tmin}, s_tmax={s_tmax}")
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = float(s_churn), float(s_tmin), float(s_tmax), float(s_noise)

    def _denoise(self, ctx: SamplingContext, x_scaled: Tensor, point: Point) -> Tensor:
        return ctx.x0(point.alpha * x_scaled, point.t)

    def step(self, ctx: SamplingContext, x: Tensor, iv: Interval) -> Tensor:
        sde = ctx.sde
        sig_t, sig_s = iv.sigma_t / iv.alpha_t, iv.sigma_s / iv.alpha_s
        x = x / iv.alpha_t
        start = iv.start
        gamma = min(self.s_churn / ctx.state["steps"], math.sqrt(2) - 1) if self.s_tmin <= sig_t <= self.s_tmax else 0.0
        if gamma > 0:
            lam_max = float(sde._log_snr(sde._time(sde.T)))
            start = Point.at_log_snr(sde, max(-math.log(sig_t * (1 + gamma)), lam_max))  # σ̂, capped at σ̃(T)
            sig_hat = start.sigma / start.alpha
            x = x + math.sqrt(max(sig_hat**2 - sig_t**2, 0.0)) * self.s_noise * ctx.noise(x)
            sig_t = sig_hat
        d = (x - self._denoise(ctx, x, start)) / sig_t
        x_euler = x + (sig_s - sig_t) * d
        end = iv.end
        d_end = (x_euler - self._denoise(ctx, x_euler, end)) / sig_s
        return iv.alpha_s * (x + (sig_s - sig_t) * 0.5 * (d + d_end))
