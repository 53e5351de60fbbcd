"""Euler–Maruyama on the reverse-time SDE (Song et al. 2021, Anderson 1982):

    x_s = x_t + [f(t) x_t − g(t)² s_θ(x_t, t)] (s − t) + g(t) √(t − s) z,   z ~ N(0, I).
"""
from __future__ import annotations

import math

from torch import Tensor

from .base import FixedStepSampler, Interval, SamplingContext


def euler_maruyama_step(ctx: SamplingContext, x: Tensor, iv: Interval) -> Tensor:
    score = ctx.score(x, iv.t)
    x = x + (iv.f_t * x - iv.g2_t * score) * iv.dt
    return x + math.sqrt(iv.g2_t * -iv.dt) * ctx.noise(x)


class EulerMaruyama(FixedStepSampler):
    """Reverse-SDE Euler–Maruyama: weak order 1, one network evaluation per step."""

    name = "euler_maruyama"

    def step(self, ctx: SamplingContext, x: Tensor, interval: Interval) -> Tensor:
        return euler_maruyama_step(ctx, x, interval)
