"""Adaptive reverse-SDE solver (Jolicoeur-Martineau et al. 2021, "Gotta Go Fast When Generating Data
with Score-Based Models", Algorithm 1), with one step size per sample.

Reverse drift b(x, t) = f(t) x − g(t)² s_θ(x, t); time runs down, step h > 0, one z ~ N(0, I) per attempt:

    x'  = x − h b(x, t) + √h g(t) z                       (Euler–Maruyama)
    x̃  = x − h b(x', t − h) + √h g(t − h) z
    x'' = (x' + x̃)/2                                      (improved Euler, same noise)
    δ = max(ε_abs, ε_rel · max(|x'|, |x_prev|)),   E = ‖(x' − x'')/δ‖_RMS per sample

A sample accepts when E ≤ 1 (continuing from x''), and its next step is min(t − eps, θ h E^{−r}).
Two network evaluations (of the whole batch) per attempt.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import per_sample
from .base import NonFiniteError, Sampler, SamplingContext, finish


class AdaptiveSDE(Sampler):
    """Gotta-Go-Fast adaptive reverse-SDE sampler (EM / improved-Euler pair, per-sample steps)."""

    name = "adaptive_sde"

    def __init__(
        self,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.01,
        safety: float = 0.9,
        exponent: float = 0.9,
        max_steps: int = 10_000,
        denoise: bool = True,
        thresholding=None,
    ):
        for name, value in (("rtol", rtol), ("atol", atol), ("h_init", h_init), ("safety", safety), ("exponent", exponent)):
            if not float(value) > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if int(max_steps) != max_steps or max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps}")
        self.rtol, self.atol, self.h_init = float(rtol), float(atol), float(h_init)
        self.safety, self.exponent, self.max_steps = float(safety), float(exponent), int(max_steps)
        self.denoise, self.thresholding = bool(denoise), thresholding

    @staticmethod
    def _drift_and_g(ctx: SamplingContext, x: Tensor, t: Tensor):
        sde = ctx.sde
        drift = per_sample(sde._f(t), x) * x - per_sample(sde._g2(t), x) * ctx.score(x, t)
        return drift, per_sample(sde._g2(t).clamp_min(0).sqrt(), x)

    def _run(self, ctx: SamplingContext, x: Tensor):
        sde = ctx.sde
        batch = x.shape[0]
        t = torch.full((batch,), sde.T, dtype=torch.float64)
        h = torch.full((batch,), self.h_init, dtype=torch.float64)
        x_prev = x
        for i in range(self.max_steps):
            active = t > sde.eps * (1 + 1e-9)
            if not active.any():
                break
            h = torch.where(active, torch.minimum(h, t - sde.eps), torch.zeros_like(h))
            z = ctx.noise(x)
            root_h = per_sample(h.sqrt(), x)
            drift, g = self._drift_and_g(ctx, x, t)
            x_em = x - per_sample(h, x) * drift + root_h * g * z
            drift2, g2 = self._drift_and_g(ctx, x_em, t - h)
            x_heun = 0.5 * (x_em + x - per_sample(h, x) * drift2 + root_h * g2 * z)
            delta = torch.clamp_min(self.rtol * torch.maximum(x_em.abs(), x_prev.abs()), self.atol)
            err = ((x_em - x_heun) / delta).reshape(batch, -1).pow(2).mean(1).sqrt().double().cpu()
            if not torch.isfinite(err[active]).all():  # a NaN proposal would be rejected forever, and h turn NaN
                raise NonFiniteError(f"{type(self).__name__}: NaN or Inf in the proposal at step {i} (t = {float(t[active].max()):.6g})")
            accept = active & (err <= 1.0)
            keep = per_sample(accept.to(x.device), x).bool()
            x_prev = torch.where(keep, x, x_prev)
            x = torch.where(keep, x_heun, x)
            t = torch.where(accept, t - h, t)
            h = torch.where(active, self.safety * h * err.clamp_min(1e-10) ** (-self.exponent), h)
            ctx.visit(x, i, float(t.max()), float(t.max()))
        else:
            raise RuntimeError(f"{type(self).__name__}: max_steps={self.max_steps} attempts did not reach eps; loosen rtol/atol")
        return finish(ctx, x, torch.tensor([sde.T, sde.eps], dtype=torch.float64), self.denoise)
