"""UniPC (Zhao et al. 2023): a unified predictor–corrector multistep exponential integrator in λ.

Data prediction, step t → s, h = λ_s − λ_t, previous evaluations m_{−k} at λ_{−k}, r_k = (λ_{−k} − λ_t)/h:

    UniP-p:  x_s = (σ_s/σ_t) x_t + α_s (1 − e^{−h}) m_t − α_s B(h) Σ_k a_k (m_{−k} − m_t)/r_k
    UniC-p:  x_s^c = (σ_s/σ_t) x_t + α_s (1 − e^{−h}) m_t − α_s B(h) [Σ_k c_k (m_{−k} − m_t)/r_k + c_p (m_s − m_t)]

with B(h) = e^{−h} − 1 ("bh2") or −h ("bh1"), the weights a, c solving R(r) a = b(h) (eq. 12 of the paper),
and m_s the model evaluated at the predicted x_s. The corrector reuses that evaluation, which the next
predictor needs anyway, so UniC raises the order by one at no extra NFE. The corrected state continues,
the evaluation at the uncorrected one is kept in the history (as in the reference implementation).
"""
from __future__ import annotations

import math
from typing import List, Sequence

from torch import Tensor

from .base import FixedStepSampler, Interval, SamplingContext
from .exponential import Point, step_order
from .grids import GridLike

VARIANTS = ("bh1", "bh2")


def _weights(rks: Sequence[float], h: float, order: int, variant: str):
    """(R, b, B(h), hφ₁) of UniPC for the ratios rks (last entry 1.0) and step h (data prediction: hh = −h);
    R and b as lists of floats."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rows, b, factorial = [], [], 1
    for i in range(1, order + 1):
        rows.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return rows, b, b_h, h_phi_1


def solve(rows: List[List[float]], b: List[float]) -> List[float]:
    """x with rows·x = b for the few-unknown systems of UniPC's weights, by Gaussian elimination with partial
    pivoting in plain floats (numpy's solve costs more in call overhead than these 1–4 unknowns in arithmetic)."""
    n = len(b)
    a = [list(row[:n]) + [b[i]] for i, row in enumerate(rows[:n])]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if a[pivot][col] == 0.0:
            raise ZeroDivisionError("UniPC: singular weight system (two history points at the same λ)")
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, n):
            f = a[r][col] / a[col][col]
            for c in range(col, n + 1):
                a[r][c] -= f * a[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (a[r][n] - sum(a[r][c] * x[c] for c in range(r + 1, n))) / a[r][r]
    return x


class UniPC(FixedStepSampler):
    """UniPC-p (p ≤ 4) with the UniC corrector (bh2 by default); one NFE per step."""

    name = "unipc"

    def __init__(
        self,
        steps: int = 10,
        order: int = 3,
        corrector: bool = True,
        variant: str = "bh2",
        lower_order_final: bool = True,
        grid: GridLike = "log_snr",
        denoise: bool = True,
        thresholding=None,
    ):
        super().__init__(steps=steps, grid=grid, denoise=denoise, thresholding=thresholding)
        if order not in (1, 2, 3, 4):
            raise ValueError(f"order must be 1, 2, 3 or 4, got {order}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.order, self.corrector, self.variant = int(order), bool(corrector), variant
        self.lower_order_final = bool(lower_order_final)

    def _base(self, x: Tensor, start: Point, end: Point, m0: Tensor, h_phi_1: float) -> Tensor:
        return (end.sigma / start.sigma) * x - (end.alpha * h_phi_1) * m0

    def _differences(self, history, start: Point, h: float, order: int):
        m0 = history[0][1]
        rks: List[float] = []
        d1s: List[Tensor] = []
        for lam_k, m_k in history[1:order]:
            rk = (lam_k - start.lam) / h
            rks.append(rk)
            d1s.append((m_k - m0) / rk)
        return rks + [1.0], d1s

    def _step_order(self, i: int, steps: int) -> int:
        return step_order(self.order, i, steps, self.lower_order_final)

    def step(self, ctx: SamplingContext, x: Tensor, iv: Interval) -> Tensor:
        point = iv.start
        m = ctx.x0(x, iv.t)
        state = ctx.state
        history = state.setdefault("history", [])  # [(λ, x̂_0)], newest first
        if self.corrector and history:
            x = self._correct(state["x_prev"], state["start"], point, history, m, state["order"])
        history.insert(0, (point.lam, m))
        del history[self.order:]
        order = self._step_order(iv.i, state["steps"])
        end = iv.end
        state.update(x_prev=x, start=point, order=order)
        return self._predict(x, point, end, history, order)

    def _predict(self, x: Tensor, start: Point, end: Point, history, order: int) -> Tensor:
        h = end.lam - start.lam
        rks, d1s = self._differences(history, start, h, order)
        R, b, b_h, h_phi_1 = _weights(rks, h, order, self.variant)
        x_next = self._base(x, start, end, history[0][1], h_phi_1)
        if not d1s:
            return x_next
        rhos = [0.5] if order == 2 else solve([row[:-1] for row in R[:-1]], b[:-1])
        return x_next - (end.alpha * b_h) * sum(r * d for r, d in zip(rhos, d1s))

    def _correct(self, x_prev: Tensor, start: Point, end: Point, history, m_new: Tensor, order: int) -> Tensor:
        h = end.lam - start.lam
        rks, d1s = self._differences(history, start, h, order)
        R, b, b_h, h_phi_1 = _weights(rks, h, order, self.variant)
        rhos = [0.5] if order == 1 else solve(R, b)
        m0 = history[0][1]
        residual = rhos[-1] * (m_new - m0)
        for r, d in zip(rhos[:-1], d1s):
            residual = residual + r * d
        return self._base(x_prev, start, end, m0, h_phi_1) - (end.alpha * b_h) * residual
