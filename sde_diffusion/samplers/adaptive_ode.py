"""Adaptive step size for the probability-flow ODE in λ: DPM-Solver-12 and -23 (Lu et al. 2022, Algorithm 4).

Each attempt from λ_t with step h computes an embedded pair sharing evaluations (exponential-integrator
steps of :mod:`.exponential`):

* order 2 ("12"): x_low = DPM-Solver-1, x_high = DPM-Solver-2 (r = 1/2)                 — 2 NFE
* order 3 ("23"): x_low = DPM-Solver-2 (r = 1/3), x_high = DPM-Solver-3 (r = 1/3, 2/3)   — 3 NFE

and :class:`.error_control.ErrorControlledSolver` accepts or rejects it and sets the next step.
The evaluation at the current point is reused after a rejection. Noise prediction is the default (as in
k-diffusion's dpm_adaptive): on the 2-D benchmark it reaches a given error with fewer NFE than x0
prediction, and on VE with x0 prediction the tolerance δ ∝ |x| ~ σ̃ lets early steps grow too long.
"""
from __future__ import annotations

from torch import Tensor

from .base import SamplingContext
from .error_control import ErrorControlledSolver
from .exponential import PREDICTION_TARGETS, Point, exp_update


class AdaptiveDPMSolver(ErrorControlledSolver):
    """Embedded DPM-Solver pair with error control on the PF-ODE (any LinearSDE)."""

    name = "dpm_solver_adaptive"

    def __init__(
        self,
        order: int = 3,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.05,
        prediction: str = "eps",
        safety: float = 0.9,
        max_steps: int = 10_000,
        denoise: bool = True,
        thresholding=None,
    ):
        if order not in (2, 3):
            raise ValueError(f"order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {order}")
        if prediction not in PREDICTION_TARGETS:
            raise ValueError(f"prediction must be one of {PREDICTION_TARGETS}, got {prediction!r}")
        super().__init__(rtol, atol, h_init, safety, max_steps, denoise, thresholding)
        self.order, self.prediction = int(order), prediction

    def _target(self, ctx: SamplingContext, x: Tensor, t: float) -> Tensor:
        pred = ctx.predict(x, t)
        return pred.x0 if self.prediction == "x0" else pred.eps

    def _stage(self, x, start: Point, end: Point, terms) -> Tensor:
        return exp_update(x, start, end, terms, self.prediction)[0]

    def _attempt(self, ctx: SamplingContext, x: Tensor, start: Point, end: Point):
        if ctx.state.get("y0") is None:  # the evaluation at the current point survives a rejection
            ctx.state["y0"] = self._target(ctx, x, start.t)
        y0 = ctx.state["y0"]
        h = end.lam - start.lam
        r1 = 0.5 if self.order == 2 else 1.0 / 3.0
        p1 = Point.at_log_snr(ctx.sde, start.lam + r1 * h)
        y1 = self._target(ctx, self._stage(x, start, p1, [y0]), p1.t)
        second = self._stage(x, start, end, [y0, (y1 - y0) / (r1 * h)])
        if self.order == 2:
            return self._stage(x, start, end, [y0]), second, 2
        p2 = Point.at_log_snr(ctx.sde, start.lam + 2.0 * h / 3.0)
        y2 = self._target(ctx, self._stage(x, start, p2, [y0, (y1 - y0) / (r1 * h)]), p2.t)
        return second, self._stage(x, start, end, [y0, (y2 - y0) / (2.0 * h / 3.0)]), 3

    def _accepted(self, ctx: SamplingContext, start: Point, end: Point) -> None:
        ctx.state["y0"] = None
