"""Adaptive reverse-SDE solver after Jolicoeur-Martineau et al. 2021, "Gotta Go Fast When Generating
Data with Score-Based Models" (Algorithm 1): an Euler–Maruyama / improved-Euler pair with error control.

Reverse drift b(x, t) = f(t) x − g(t)² s_θ(x, t); time runs down, step h > 0, Brownian increment ΔW over [t − h, t]:

    x'  = x − h b(x, t) + g(t) ΔW                          (Euler–Maruyama)
    x̃  = x − h b(x', t − h) + g(t − h) ΔW
    x'' = (x' + x̃)/2                                      (improved Euler, same increment)
    δ = max(ε_abs, ε_rel · max(|x'|, |x_prev|)),   E = ‖(x' − x'')/δ‖_RMS

The step accepts when E ≤ 1 (continuing from x''); the next step is min(t − eps, θ h E^{−r}).
Two network evaluations per attempt.

Unlike the paper, which draws fresh noise for every attempt and keeps one step size per sample, the
increments here come from one Brownian path (torchsde's BrownianTree, seeded from ``generator``)
queried on each attempted interval, with one step size for the batch. Fresh noise per attempt makes the
acceptance depend on the noise and biases the samples (in 2-D the variance came out 1.5–3× too
large); on a fixed path a rejected step is retried on the same path, so the result converges to
that path's solution.
"""
from __future__ import annotations

import math
import warnings

import torch
import torchsde
from torch import Tensor

from .._checks import positive, positive_int
from .base import NonFiniteError, Sampler, SamplingContext, finish


class AdaptiveSDE(Sampler):
    """Adaptive reverse-SDE sampler (Gotta-Go-Fast's EM / improved-Euler pair on a fixed Brownian path)."""

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
            positive(value, name)
        positive_int(max_steps, "max_steps")
        self.rtol, self.atol, self.h_init = float(rtol), float(atol), float(h_init)
        self.safety, self.exponent, self.max_steps = float(safety), float(exponent), int(max_steps)
        self.denoise, self.thresholding = bool(denoise), thresholding

    @staticmethod
    def _drift_and_g(ctx: SamplingContext, x: Tensor, t: float):
        sde = ctx.sde
        t64 = torch.tensor(t, dtype=torch.float64)
        g2 = float(sde._g2(t64))
        return float(sde._f(t64)) * x - g2 * ctx.score(x, t), math.sqrt(max(g2, 0.0))

    def _run(self, ctx: SamplingContext, x: Tensor):
        sde = ctx.sde
        span = sde.T - sde.eps  # the path runs in u = T − t ∈ [0, T − eps]
        if isinstance(ctx.generator, (list, tuple)):
            raise ValueError(f"{type(self).__name__} draws one Brownian path for the whole batch: generator must be a single torch.Generator, not a list")
        entropy = int(torch.randint(0, 2**62, (1,), generator=ctx.generator)) if ctx.generator is not None else None
        flat = x.reshape(x.shape[0], -1)
        path = torchsde.BrownianTree(t0=0.0, w0=torch.zeros_like(flat), t1=span, entropy=entropy, tol=1e-9 * span)
        t, h, x_prev = sde.T, min(self.h_init, span), x
        times = [t]
        for i in range(self.max_steps):
            if t <= sde.eps * (1 + 1e-9):
                break
            h = min(h, t - sde.eps)
            u = sde.T - t
            with warnings.catch_warnings():  # BrownianTree's point queries warn that intervals would be faster
                warnings.simplefilter("ignore", UserWarning)
                dw = (path(min(u + h, span)) - path(u)).reshape(x.shape)
            drift, g = self._drift_and_g(ctx, x, t)
            x_em = x - h * drift + g * dw
            drift2, g2 = self._drift_and_g(ctx, x_em, t - h)
            x_heun = 0.5 * (x_em + x - h * drift2 + g2 * dw)
            delta = torch.clamp_min(self.rtol * torch.maximum(x_em.abs(), x_prev.abs()), self.atol)
            err = float(torch.linalg.vector_norm((x_em - x_heun) / delta) / math.sqrt(x.numel()))
            if not math.isfinite(err):  # a NaN proposal would be rejected forever, and h turn NaN
                raise NonFiniteError(f"{type(self).__name__}: NaN or Inf in the proposal at step {i} (t = {t:.6g})")
            if err <= 1.0:
                x_prev, x = x, x_heun
                ctx.visit(x, len(times) - 1, t, t - h)
                t = t - h
                times.append(t)
            h = self.safety * h * max(err, 1e-10) ** (-self.exponent)
        else:
            raise RuntimeError(f"{type(self).__name__}: max_steps={self.max_steps} attempts did not reach eps; loosen rtol/atol")
        return finish(ctx, x, torch.tensor(times, dtype=torch.float64), self.denoise)
