"""The likelihood ODE integrated forward in λ by UniPC with error control: one network evaluation per attempt.

In the log-SNR λ = log(α/σ), decreasing in t, the probability-flow ODE and the divergence integral of
:mod:`.likelihood` are semilinear (x̂_0 = (x + σ² s_θ)/α, d log σ/dλ = −1 − 2fσ²/g²):

    dx/dλ = (d log σ/dλ) x + α x̂_0(x, λ),        dΔ/dλ = (∇·h) dt/dλ = D (d log σ/dλ) + q(x, λ),
    q = α ∇·x̂_0 = D + σ² ∇·s_θ,

so Δ(T) = D log(σ_T/σ_t0) + ∫_{λ_t0}^{λ_T} q dλ: the linear part exactly, q by quadrature. The x part is the
variation-of-constants formula UniPC solves (Zhao et al. 2023), run here from λ_t0 down to λ_T (h < 0; the
formulas of :mod:`.samplers.unipc` hold for either sign of h, checked by the order tests). Per attempt λ_t → λ_s:

    x_p = UniP-k(x_t),   (m, q_s) = (x̂_0, q)(x_p, λ_s)   (the attempt's one evaluation),   x_c = UniC-k(x_t; m),
    Δ_p = Δ_t + h Σ_j a_j q_j             (Adams–Bashforth over the k evaluations kept, like UniP-k),
    Δ_c = Δ_t + h [Σ_j b_j q_j + b_s q_s]  (Adams–Moulton through q_s, like UniC-k),

a, b the integrals over [0, 1] of the Lagrange polynomials at r_j = (λ_j − λ_t)/h (variable spacing). Two
refinements cost no evaluation:

* with the exact divergence the evaluation already gives the Jacobian ∂s_θ/∂x (one backward pass per
  dimension), so the evaluation made at x_p is carried to x_c before it joins the history,
  m ← m + (I + σ² ∂s_θ/∂x)(x_c − x_p)/α (first order; UniPC's PEC step then behaves like PECE). On the
  exact-score GMMs this cut the NFE to a given error by 5–15 %. (Hutchinson probes give no Jacobian: no transport.)
* Δ does not feed back into x, so the returned Δ(T) integrates the q of all accepted steps afresh with a
  composite rule centred on each interval (:func:`composite_quadrature`, 6 nodes) instead of the one-sided
  Adams sums (about 10 % fewer NFE there); memory: B numbers per accepted step.

Step-size control, as in :mod:`.samplers.error_control` but stepping the other way in λ: the error of log p is
estimated per row by |Δ_p − Δ_c| + |s_θ · (x_p − x_c)| (the quadrature's local error, and the state's, carried
to log p by its gradient, the score), the state's by x_p − x_c; with δ = max(atol, rtol · max(|low|, |start|)),

    E = max(‖(x_p − x_c)/δ_x‖_RMS, ‖e_logp/δ_Δ‖_RMS);   accept x_c when E ≤ 1;   h ← h · clip(safety · E^{−1/(k+1)}, 0.2, 5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ._checks import positive, positive_int
from .samplers.exponential import Point
from .samplers.unipc import UniPC
from .sde import LinearSDE

#: evaluate(x, t) -> (score, ∇·score per row, ∂score/∂x as (B, D, D) or None), float64; one network evaluation
ScoreAndDivergence = Callable[[Tensor, float], Tuple[Tensor, Tensor, Optional[Tensor]]]
F64 = torch.float64
ORDERS = (1, 2, 3, 4)
#: nodes per interval of the final quadrature of q
QUADRATURE_NODES = 6


@dataclass(frozen=True)
class ForwardSolve:
    """x carried from t0 to T (``z``), Δ(T) = ∫_{t0}^{T} ∇·h dt per row, and the step counts."""

    z: Tensor
    delta: Tensor
    accepted: int
    rejected: int


@dataclass(frozen=True)
class Attempt:
    """One attempted step: predicted and corrected x, corrected Δ, the per-row error estimate of log p, its order."""

    x_pred: Tensor
    x_corr: Tensor
    delta: Tensor
    logp_error: Tensor
    order: int


def quadrature_weights(nodes: Sequence[float]) -> np.ndarray:
    """w with ∫_0^1 P(r) dr = Σ_j w_j P(r_j) for every polynomial P of degree < len(nodes) (distinct nodes)."""
    r = np.asarray(nodes, dtype=np.float64)
    vandermonde = r[None, :] ** np.arange(len(r))[:, None]
    return np.linalg.solve(vandermonde, 1.0 / np.arange(1, len(r) + 1))


def composite_quadrature(lams: Sequence[float], values: Sequence[Tensor], width: int = QUADRATURE_NODES) -> Tensor:
    """∫_{lams[0]}^{lams[-1]} y dλ from y at the nodes: on each interval the integral of the polynomial through the
    ``width`` nodes centred on it (shifted inwards at the ends); local error O(h^{width+1}) for smooth y."""
    n = len(lams) - 1
    width = min(positive_int(width, "width"), n + 1)
    total = torch.zeros_like(values[0])
    for j in range(n):
        lo = min(max(j - (width - 2) // 2, 0), n + 1 - width)
        h = lams[j + 1] - lams[j]
        weights = quadrature_weights([(lams[i] - lams[j]) / h for i in range(lo, lo + width)])
        total = total + h * _weighted(weights, values[lo:lo + width])
    return total


class ForwardUniPC:
    """UniPC-k (k ≤ ``order``) predictor–corrector for (x, Δ) from t0 towards T, as an embedded pair (module docstring)."""

    def __init__(self, evaluate: ScoreAndDivergence, dim: int, order: int = 4):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.evaluate, self.dim, self.order = evaluate, int(dim), int(order)
        self._rule = UniPC(order=self.order, variant="bh2")
        self.history: List[Tuple[float, Tensor, Tensor]] = []  # (λ_j, x̂_0, q), newest first, at most ``order``
        self.nodes: List[Tuple[float, Tensor]] = []  # (λ_j, q) of every accepted evaluation, oldest first
        self._pending: Optional[Tuple[float, Tensor, Tensor]] = None

    def _evaluate(self, x: Tensor, point: Point) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
        """(x̂_0, q, score, ∂score/∂x or None) at x, λ of ``point``."""
        score, div_score, jacobian = self.evaluate(x, point.t)
        var = point.sigma**2
        return (x + var * score) / point.alpha, self.dim + var * div_score, score, jacobian

    def begin(self, x: Tensor, start: Point) -> None:
        x0, q, _, _ = self._evaluate(x, start)
        self._pending = (start.lam, x0, q)
        self.accept()

    def attempt(self, x: Tensor, delta: Tensor, start: Point, end: Point) -> Attempt:
        """The step start → end (one evaluation)."""
        k = min(self.order, len(self.history))
        lams, qs = [e[0] for e in self.history[:k]], [e[2] for e in self.history[:k]]
        pairs = [(lam, x0) for lam, x0, _ in self.history]
        h = end.lam - start.lam
        x_pred = self._rule._predict(x, start, end, pairs, k)
        m, q_new, score, jacobian = self._evaluate(x_pred, end)
        x_corr = self._rule._correct(x, start, end, pairs, m, k)
        nodes = [(lam - start.lam) / h for lam in lams]
        base = delta + self.dim * math.log(end.sigma / start.sigma)
        d_pred = base + h * _weighted(quadrature_weights(nodes), qs)
        d_corr = base + h * _weighted(quadrature_weights(nodes + [1.0]), qs + [q_new])
        logp_error = (d_pred - d_corr).abs() + _row_sum(score * (x_pred - x_corr)).abs()
        if jacobian is not None:  # the evaluation carried from x_p to x_c: ∂x̂_0/∂x = (I + σ² ∂s/∂x)/α
            step = x_corr - x_pred
            m = m + (step + end.sigma**2 * _apply(jacobian, step)) / end.alpha
        self._pending = (end.lam, m, q_new)
        return Attempt(x_pred, x_corr, d_corr, logp_error, k + 1)

    def accept(self) -> None:
        """The last attempt (or :meth:`begin`) stands: its evaluation joins the history and the quadrature nodes."""
        self.history.insert(0, self._pending)
        del self.history[self.order:]
        self.nodes.append((self._pending[0], self._pending[2]))

    def delta(self, start: Point, stop: Point) -> Tensor:
        """Δ from ``start`` to ``stop`` = D log(σ_stop/σ_start) + the composite quadrature of q over the accepted nodes."""
        lams, qs = [n[0] for n in self.nodes], [n[1] for n in self.nodes]
        return self.dim * math.log(stop.sigma / start.sigma) + composite_quadrature(lams, qs)


def point_at_log_snr(sde: LinearSDE, lam: float, lo: float, hi: float) -> Point:
    """The schedule at λ = ``lam`` with t in [lo, hi] (λ(lo) ≥ lam ≥ λ(hi)).

    SDEs with a closed-form inverse use it; for the others (the generic inverse bisects 80 times, each a full
    schedule evaluation) Newton's method on λ(t), dλ/dt = −g²/(2σ²), started at lo, bisecting where it leaves the
    bracket: a handful of evaluations per step.
    """
    if type(sde)._t_of_log_snr is not LinearSDE._t_of_log_snr:
        return Point.at_log_snr(sde, lam)
    t = lo
    for _ in range(100):
        tt = torch.tensor(t, dtype=F64)
        gap = float(sde._log_snr(tt)) - lam  # > 0: t lies to the right
        if abs(gap) <= 1e-13 * max(1.0, abs(lam)):
            break
        lo, hi = (t, hi) if gap > 0 else (lo, t)
        slope = -float(sde._g2(tt)) / (2.0 * math.exp(2.0 * float(sde._log_sigma(tt))))
        newton = t - gap / slope if slope < 0 else math.nan
        t = newton if lo < newton < hi else 0.5 * (lo + hi)
        if hi - lo <= 1e-15 * max(1.0, hi):
            break
    return Point.at_time(sde, t)


def integrate(
    evaluate: ScoreAndDivergence,
    sde: LinearSDE,
    x: Tensor,
    t_start: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    order: int = 4,
    h_init: float = 0.1,
    safety: float = 0.7,
    max_steps: int = 10_000,
    steps: Optional[int] = None,
) -> ForwardSolve:
    """(x, Δ) from ``t_start`` to T with :class:`ForwardUniPC` (module docstring); x float64 of shape (B, …).

    Adaptive in λ from |h| = ``h_init`` unless ``steps`` is given: then ``steps`` equal steps in λ without error
    control (for measuring the order). ``evaluate`` is called once at t_start and once per attempt.
    """
    rtol, atol, h_init, safety = (positive(v, n) for v, n in ((rtol, "rtol"), (atol, "atol"), (h_init, "h_init"),
                                                              (safety, "safety")))
    max_steps = positive_int(max_steps, "max_steps")
    solver = ForwardUniPC(evaluate, x[0].numel(), order)
    first, stop = Point.at_time(sde, t_start), Point.at_time(sde, float(sde.T))
    delta = torch.zeros(x.shape[0], dtype=F64, device=x.device)
    solver.begin(x, first)
    start = first
    if steps is not None:
        lams = np.linspace(first.lam, stop.lam, positive_int(steps, "steps") + 1)[1:]
        for i, lam in enumerate(lams):
            end = stop if i == len(lams) - 1 else point_at_log_snr(sde, float(lam), start.t, stop.t)
            step = solver.attempt(x, delta, start, end)
            x, delta, start = step.x_corr, step.delta, end
            solver.accept()
        return ForwardSolve(x, solver.delta(first, stop), len(lams), 0)
    h, accepted, rejected = -h_init, 0, 0
    for _ in range(max_steps):
        remaining = stop.lam - start.lam  # < 0: λ falls from t0 to T
        if remaining >= -1e-12 * max(1.0, abs(stop.lam)):
            return ForwardSolve(x, solver.delta(first, stop), accepted, rejected)
        h = max(h, remaining)
        end = stop if h == remaining else point_at_log_snr(sde, start.lam + h, start.t, stop.t)
        step = solver.attempt(x, delta, start, end)
        delta_scale = torch.clamp_min(rtol * torch.maximum(step.delta.abs(), delta.abs()), atol)
        error = max(_rms_ratio(step.x_pred - step.x_corr, _scale(step.x_pred, x, rtol, atol)),
                    _rms_ratio(step.logp_error, delta_scale))
        if not math.isfinite(error):
            raise FloatingPointError(f"log_likelihood: NaN or Inf in the ODE state on the step t = {start.t:.6g} -> {end.t:.6g}")
        if error <= 1.0:
            x, delta, start = step.x_corr, step.delta, end
            solver.accept()
            accepted += 1
        else:
            rejected += 1
        h *= min(max(safety * max(error, 1e-10) ** (-1.0 / step.order), 0.2), 5.0)
    raise RuntimeError(f"log_likelihood: max_steps={max_steps} attempts did not reach T (t = {start.t:.6g}); loosen rtol/atol")


def _scale(low: Tensor, start: Tensor, rtol: float, atol: float) -> Tensor:
    return torch.clamp_min(rtol * torch.maximum(low.abs(), start.abs()), atol)


def _rms_ratio(error: Tensor, scale: Tensor) -> float:
    return float(torch.linalg.vector_norm(error / scale) / math.sqrt(error.numel()))


def _weighted(weights: np.ndarray, values: Sequence[Tensor]) -> Tensor:
    out = float(weights[0]) * values[0]
    for w, v in zip(weights[1:], values[1:]):
        out = out + float(w) * v
    return out


def _row_sum(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def _apply(jacobian: Tensor, v: Tensor) -> Tensor:
    """Per row, the (D, D) Jacobian times v (any trailing shape, flattened to D)."""
    return torch.einsum("bij,bj->bi", jacobian, v.reshape(v.shape[0], -1)).reshape(v.shape)
