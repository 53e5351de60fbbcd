"""The reverse-diffusion predictor (Song et al. 2021, eq. 46): reverse the discretised forward kernel
x_t = α_{t|s} x_s + σ_{t|s} z,

    x_s = (2 − α_{t|s}) x_t + σ²_{t|s} s_θ(x_t, t) + σ_{t|s} z.
"""
from __future__ import annotations

import math

from torch import Tensor

from .base import FixedStepSampler, Interval, SamplingContext


def reverse_diffusion_step(ctx: SamplingContext, x: Tensor, iv: Interval) -> Tensor:
    score = ctx.score(x, iv.t)
    x = (2.0 - iv.alpha_ts) * x + iv.var_ts * score
    return x + math.sqrt(iv.var_ts) * ctx.noise(x)


class ReverseDiffusion(FixedStepSampler):
    """score_sde's reverse-diffusion sampler: one network evaluation per step."""

    name = "reverse_diffusion"

    def step(self, ctx: SamplingContext, x: Tensor, interval: Interval) -> Tensor:
        return reverse_diffusion_step(ctx, x, interval)
