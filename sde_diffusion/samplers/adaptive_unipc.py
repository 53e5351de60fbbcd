"""Adaptive step size for the probability-flow ODE with one network evaluation per attempt: UniPC's
predictor and corrector (Zhao et al. 2023) as an embedded pair, in the spirit of Adams PECE with Milne's device.

From λ_t with step h and the evaluations kept so far (variable spacing in λ is native to UniPC):

    x_p = UniP-k(x_t; h)               (order k, no new evaluation)
    m   = x̂_0(x_p, t(λ_t + h))         (the one evaluation of the attempt)
    x_c = UniC-k(x_t; h, m)            (order k + 1, reuses m)

and :class:`.error_control.ErrorControlledSolver` judges the pair (x_p, x_c): E ≈ the predictor's local error,
of order k + 1. An accepted x_c continues and m joins the history, as in UniPC.
k grows from 1 to ``order`` as evaluations accumulate. A rejected attempt costs its one evaluation, which is
why the default safety factor is 0.7 rather than the usual 0.9: on the benchmark GMMs it reached a given
error with ~15 % fewer NFE. The default order 4 (UniP-4, corrected to fifth order) reached RMS 1e-4 there
with ~10 % fewer NFE than order 3.
"""
from __future__ import annotations

from torch import Tensor

from .base import SamplingContext
from .error_control import ErrorControlledSolver
from .exponential import Point
from .unipc import VARIANTS, UniPC


class AdaptiveUniPC(ErrorControlledSolver):
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
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        super().__init__(rtol, atol, h_init, safety, max_steps, denoise, thresholding)
        self._rule = UniPC(order=order, variant=variant)  # validates order
        self.order, self.variant = int(order), variant

    def _begin(self, ctx: SamplingContext, x: Tensor, start: Point) -> None:
        ctx.state["history"] = [(start.lam, ctx.x0(x, start.t))]  # [(λ, x̂_0)], newest first

    def _attempt(self, ctx: SamplingContext, x: Tensor, start: Point, end: Point):
        history = ctx.state["history"]
        k = min(self.order, len(history))
        x_pred = self._rule._predict(x, start, end, history, k)
        m = ctx.x0(x_pred, end.t)
        ctx.state["pending"] = (end.lam, m)
        return x_pred, self._rule._correct(x, start, end, history, m, k), k + 1

    def _accepted(self, ctx: SamplingContext, start: Point, end: Point) -> None:
        history = ctx.state["history"]
        history.insert(0, ctx.state["pending"])
        del history[self.order:]
