"""DPM-Solver and DPM-Solver++ (Lu et al. 2022a, 2022b): exponential integrators in λ = log(α/σ).

One step from t to s (h = λ_s − λ_t) with a k-th order estimate of x̂_0 (or ε̂) along λ:

    DPM-Solver++ (prediction="x0"):  x_s = (σ_s/σ_t) e^{−ηh} x_t + α_s Σ_j (1+η) h^{j+1} φ_{j+1}(−(1+η)h) D_j [+ σ_s √(1−e^{−2ηh}) z]
    DPM-Solver   (prediction="eps"): x_s = (α_s/α_t) x_t − σ_s Σ_j h^{j+1} φ_{j+1}(h) D_j

* order 1 is DDIM (η = 0) / DDPM ancestral (η = 1);
* multistep (2M, 3M): D_j from the last ``order`` evaluations (divided differences in λ), one NFE per step;
* singlestep (2S, 3S): intermediate evaluations at λ_t + r h, ``order`` NFE per step; 3S is DPM-Solver-3
  (r = 1/3, 2/3; the last stage uses only (y(2h/3) − y_t)/(2h/3), which makes it third order);
* ``solver_type="midpoint"`` uses the original DPM-Solver second-order weight (h/2)·h φ_1 instead of
  the Taylor weight h² φ_2 (both are second order; "midpoint" reproduces k-diffusion's dpmpp_2m);
* ``eta > 0`` (x0 prediction only) is SDE-DPM-Solver++ (1, 2M, 3M).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .base import FixedStepSampler, Interval, SamplingContext
from .exponential import PREDICTION_TARGETS, Point, derivatives, exp_update, step_order
from .grids import GridLike

SOLVER_TYPES = ("taylor", "midpoint")


class DPMSolver(FixedStepSampler):
    """DPM-Solver(++) of order 1–3, multistep or singlestep, ODE or SDE (η)."""

    name = "dpm_solver"

    def __init__(
        self,
        steps: int = 20,
        order: int = 2,
        multistep: bool = True,
        prediction: str = "x0",
        solver_type: str = "taylor",
        eta: float = 0.0,
        lower_order_final: bool = True,
        grid: GridLike = "log_snr",
        denoise: bool = True,
        thresholding=None,
        denoise_to_zero: Optional[bool] = None,
    ):
        super().__init__(steps=steps, grid=grid, denoise=denoise if denoise_to_zero is None else denoise_to_zero,
                         thresholding=thresholding)
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order}")
        if prediction not in PREDICTION_TARGETS:
            raise ValueError(f"prediction must be one of {PREDICTION_TARGETS}, got {prediction!r}")
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
        eta = float(eta)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        if eta > 0 and prediction != "x0":
            raise ValueError("eta > 0 (SDE-DPM-Solver++) needs prediction='x0'")
        if eta > 0 and not multistep and order > 1:
            # its intermediate stages are deterministic, so orders 2 and 3 would only repeat order 1 at 2–3× the cost
            raise ValueError("eta > 0 needs multistep=True for order > 1 (SDE-DPM-Solver++ 2M/3M)")
        self.order, self.multistep, self.prediction = int(order), bool(multistep), prediction
        self.solver_type, self.eta, self.lower_order_final = solver_type, eta, bool(lower_order_final)

    # ----- helpers -----
    def _target(self, ctx: SamplingContext, x: Tensor, t: float) -> Tensor:
        pred = ctx.predict(x, t)
        return pred.x0 if self.prediction == "x0" else pred.eps

    def _update(self, ctx, x: Tensor, start: Point, end: Point, terms, noise_ok: bool = True, second_order: bool = True) -> Tensor:
        midpoint = second_order and self.solver_type == "midpoint"
        x, noise_std = exp_update(x, start, end, terms, self.prediction, self.eta, midpoint)
        return x + noise_std * ctx.noise(x) if noise_std > 0 and noise_ok else x

    def _step_order(self, i: int, steps: int) -> int:
        return step_order(self.order, i, steps, self.lower_order_final)

    # ----- the step -----
    def step(self, ctx: SamplingContext, x: Tensor, iv: Interval) -> Tensor:
        start = iv.start
        end = iv.end
        y0 = self._target(ctx, x, iv.t)
        if self.multistep:
            return self._multistep(ctx, x, iv.i, start, end, y0)
        return self._singlestep(ctx, x, start, end, y0)

    def _multistep(self, ctx, x, i, start: Point, end: Point, y0: Tensor) -> Tensor:
        history = ctx.state.setdefault("history", [])  # [(λ, prediction)], newest first
        history.insert(0, (start.lam, y0))
        del history[self.order:]
        k = self._step_order(i, ctx.state["steps"])
        terms = derivatives([lam for lam, _ in history[:k]], [y for _, y in history[:k]])
        return self._update(ctx, x, start, end, terms)

    def _singlestep(self, ctx, x, start: Point, end: Point, y0: Tensor) -> Tensor:
        h = end.lam - start.lam
        if self.order == 1:
            return self._update(ctx, x, start, end, [y0])
        if self.order == 2:
            mid = Point.at_log_snr(ctx.sde, start.lam + 0.5 * h)
            y1 = self._target(ctx, self._update(ctx, x, start, mid, [y0], noise_ok=False), mid.t)
            return self._update(ctx, x, start, end, [y0, (y1 - y0) / (0.5 * h)])
        p1 = Point.at_log_snr(ctx.sde, start.lam + h / 3)
        p2 = Point.at_log_snr(ctx.sde, start.lam + 2 * h / 3)
        y1 = self._target(ctx, self._update(ctx, x, start, p1, [y0], noise_ok=False), p1.t)
        # both second stages of DPM-Solver-3 need the Taylor weight h²φ₂ to stay third order
        u2 = self._update(ctx, x, start, p2, [y0, (y1 - y0) / (h / 3)], noise_ok=False, second_order=False)
        y2 = self._target(ctx, u2, p2.t)
        return self._update(ctx, x, start, end, [y0, (y2 - y0) / (2 * h / 3)], second_order=False)
