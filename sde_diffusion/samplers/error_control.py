"""The loop shared by the error-controlled probability-flow solvers, which step in λ = log(α/σ).

As in diffrax, the step rule and the controller are separate: a solver only proposes an embedded pair
(x_low, x_high) of local order p for the step λ_t → λ_t + h, and this loop decides

    δ = max(atol, rtol · max(|x_low|, |x_t|)),   E = ‖(x_low − x_high)/δ‖_RMS,
    accept (continue from x_high) when E ≤ 1;    h ← h · clip(safety · E^{−1/p}, 0.2, 5),

clipping the last step onto λ(eps) and finishing with the sampler's denoise.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from typing import Tuple

import torch
from torch import Tensor

from .._checks import positive, positive_int
from .base import Sampler, SamplingContext, finish
from .exponential import Point


class ErrorControlledSolver(Sampler):
    """Base of the adaptive PF-ODE solvers: subclasses implement :meth:`_attempt` (and optional hooks)."""

    def __init__(self, rtol: float, atol: float, h_init: float, safety: float, max_steps: int,
                 denoise: bool = True, thresholding=None):
        for name, value in (("rtol", rtol), ("atol", atol), ("h_init", h_init), ("safety", safety)):
            positive(value, name)
        self.rtol, self.atol, self.h_init, self.safety = float(rtol), float(atol), float(h_init), float(safety)
        self.max_steps = positive_int(max_steps, "max_steps")
        self.denoise, self.thresholding = bool(denoise), thresholding

    def _begin(self, ctx: SamplingContext, x: Tensor, start: Point) -> None:
        """Called once before the first attempt."""

    @abstractmethod
    def _attempt(self, ctx: SamplingContext, x: Tensor, start: Point, end: Point) -> Tuple[Tensor, Tensor, int]:
        """(x_low, x_high, p): the embedded pair for start → end and the order of its error estimate."""

    def _accepted(self, ctx: SamplingContext, start: Point, end: Point) -> None:
        """Called when the attempt start → end is accepted."""

    def _run(self, ctx: SamplingContext, x: Tensor):
        sde = ctx.sde
        start, stop = Point.at_time(sde, sde.T), Point.at_time(sde, sde.eps)
        self._begin(ctx, x, start)
        h, times = self.h_init, [start.t]
        for _ in range(self.max_steps):
            remaining = stop.lam - start.lam
            if remaining <= 1e-12 * max(1.0, abs(stop.lam)):
                break
            h = min(h, remaining)
            end = stop if h == remaining else Point.at_log_snr(sde, start.lam + h)
            low, high, order = self._attempt(ctx, x, start, end)
            delta = torch.clamp_min(self.rtol * torch.maximum(low.abs(), x.abs()), self.atol)
            error = float(torch.linalg.vector_norm((low - high) / delta) / math.sqrt(low.numel()))
            if not math.isfinite(error):
                ctx.guard.check(high, len(times) - 1, start.t, end.t)
            if error <= 1.0:
                x = high
                self._accepted(ctx, start, end)
                ctx.visit(x, len(times) - 1, start.t, end.t)
                start = end
                times.append(end.t)
            h *= min(max(self.safety * max(error, 1e-10) ** (-1.0 / order), 0.2), 5.0)
        else:
            raise RuntimeError(f"{type(self).__name__}: max_steps={self.max_steps} attempts did not reach eps "
                               f"(t = {start.t:.6g}); loosen rtol/atol")
        return finish(ctx, x, torch.tensor(times, dtype=torch.float64), self.denoise)
