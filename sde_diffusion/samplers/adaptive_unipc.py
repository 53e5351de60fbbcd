"""Adaptive step size for the probability-flow ODE with one network evaluation per attempt: UniPC's
predictor and corrector (Zhao et al. 2023) as an embedded pair, in the spirit of Adams PECE with Milne's device.

From λ_t with step h and the evaluations kept so far (variable spacing in λ is native to UniPC):

    x_p = UniP-k(x_t; h)               (order k, no new evaluation)
    m   = x̂_0(x_p, t(λ_t + h))         (the one evaluation of the attempt)
    x_c = UniC-k(x_t; h, m)            (order k + 1, reuses m)
    δ = max(atol, rtol · max(|x_p|, |x_t|)),   E = ‖(x_c − x_p)/δ‖_RMS  ≈ the predictor's local error

accepting x_c when E ≤ 1 (m joins the history, as in UniPC), and scaling h by clip(safety · E^{−1/(k+1)}, 0.2, 5).
The default order 4 (UniP-4, corrected to fifth order; measured on the benchmark GMMs) reached RMS 1e-4
with ~10 % fewer NFE than order 3.
k grows from 1 to ``order`` as evaluations accumulate. A rejected attempt costs its one evaluation, which is
why the default safety factor is 0.7 rather than the usual 0.9: on the benchmark GMMs it reached a given
error with ~15 % fewer NFE.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import positive, positive_int
from .base import Sampler, SamplingContext, finish
from .exponential import Point
from .unipc import VARIANTS, UniPC


class AdaptiveUniPC(Sampler):
    """Error-controlled UniPC on the PF-ODE: one NFE per attempted step (any LinearSDE)."""

    name = "unipc_adaptive"

    def __init__(
        self,
        order: int = 4,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.05,
        variant: str = "bh2",
        safety: float = 0.7,
        max_steps: int = 10_000,
        denoise: bool = True,
        thresholding=None,
    ):
        if order not in (1, 2, 3, 4):
            raise ValueError(f"order must be 1, 2, 3 or 4, got {order}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        for name, value in (("rtol", rtol), ("atol", atol), ("h_init", h_init), ("safety", safety)):
            positive(value, name)
        positive_int(max_steps, "max_steps")
        self.order, self.rtol, self.atol, self.h_init = int(order), float(rtol), float(atol), float(h_init)
        self.variant, self.safety, self.max_steps = variant, float(safety), int(max_steps)
        self.denoise, self.thresholding = bool(denoise), thresholding
        self._rule = UniPC(order=self.order, variant=variant)

    def _run(self, ctx: SamplingContext, x: Tensor):
        sde = ctx.sde
        start, stop = Point.at_time(sde, sde.T), Point.at_time(sde, sde.eps)
        history = [(start.lam, ctx.x0(x, start.t))]  # [(λ, x̂_0)], newest first
        h = self.h_init
        times = [start.t]
        for _ in range(self.max_steps):
            remaining = stop.lam - start.lam
            if remaining <= 1e-12 * max(1.0, abs(stop.lam)):
                break
            h = min(h, remaining)
            end = stop if h == remaining else Point.at_log_snr(sde, start.lam + h)
            k = min(self.order, len(history))
            x_pred = self._rule._predict(x, start, end, history, k)
            m = ctx.x0(x_pred, end.t)
            x_corr = self._rule._correct(x, start, end, history, m, k)
            delta = torch.clamp_min(self.rtol * torch.maximum(x_pred.abs(), x.abs()), self.atol)
            error = float(torch.linalg.vector_norm((x_corr - x_pred) / delta) / math.sqrt(x.numel()))
            if not math.isfinite(error):
                ctx.guard(x_corr, len(times) - 1, start.t, end.t)
            if error <= 1.0:
                x = x_corr
                history.insert(0, (end.lam, m))
                del history[self.order:]
                ctx.visit(x, len(times) - 1, start.t, end.t)
                start = end
                times.append(end.t)
            h *= min(max(self.safety * max(error, 1e-10) ** (-1.0 / (k + 1)), 0.2), 5.0)
        else:
            raise RuntimeError(f"{type(self).__name__}: max_steps={self.max_steps} attempts did not reach eps (t = {start.t:.6g}); loosen rtol/atol")
        return finish(ctx, x, torch.tensor(times, dtype=torch.float64), self.denoise)
