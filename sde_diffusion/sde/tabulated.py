"""A linear SDE from arbitrary coefficients f(t), g(t): marginals by numerical integration.

    log α(t) = ∫₀ᵗ f,     ρ(t) := σ(t)²/α(t)² = σ(0)² + ∫₀ᵗ g²/α²

are integrated once with scipy's DOP853 (rtol 1e-12) onto a uniform grid of knots and then
interpolated with cubic Hermite splines that use the exact derivatives f and g²/α² at the knots,
so the interpolation error is O(h⁴) (far below 1e-5 relative for smooth schedules).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from .._checks import horizon
from .base import LinearSDE


def _evaluate(fn: Callable, t: Tensor, name: str) -> Tensor:
    out = torch.as_tensor(fn(t), dtype=torch.float64, device=t.device)
    try:
        return out.expand_as(t)
    except RuntimeError:
        raise ValueError(f"{name}(t) must return a scalar or a tensor shaped like t {tuple(t.shape)}, got {tuple(out.shape)}")


def _hermite(knots_y: Tensor, knots_dy: Tensor, h: float, t: Tensor) -> Tensor:
    """Cubic Hermite interpolation on the uniform grid 0, h, 2h, … (values and derivatives given)."""
    n = knots_y.shape[0] - 1
    pos = t / h
    k = pos.floor().clamp(0, n - 1).long()
    u = pos - k
    y0, y1 = knots_y.to(t.device)[k], knots_y.to(t.device)[k + 1]
    d0, d1 = knots_dy.to(t.device)[k] * h, knots_dy.to(t.device)[k + 1] * h
    u2, u3 = u * u, u * u * u
    return (2 * u3 - 3 * u2 + 1) * y0 + (u3 - 2 * u2 + u) * d0 + (-2 * u3 + 3 * u2) * y1 + (u3 - u2) * d1


class TabulatedSDE(LinearSDE):
    """dx = f(t) x dt + g(t) dW for user-supplied f, g (build it with ``LinearSDE.from_coefficients``)."""

    def __init__(
        self,
        f: Callable[[Tensor], Tensor],
        g: Callable[[Tensor], Tensor],
        T: float = 1.0,
        eps: float = 1e-3,
        sigma0: float = 0.0,
        knots: int = 4096,
    ):
        if not callable(f):
            raise TypeError(f"f must be callable f(t) -> tensor, got {type(f).__name__}")
        if not callable(g):
            raise TypeError(f"g must be callable g(t) -> tensor, got {type(g).__name__}")
        self.T, self.eps = horizon(T, eps)
        sigma0 = float(sigma0)
        if not sigma0 >= 0 or not np.isfinite(sigma0):
            raise ValueError(f"sigma0 must be a finite number >= 0, got {sigma0}")
        if int(knots) != knots or knots < 16:
            raise ValueError(f"knots must be an integer >= 16, got {knots}")
        self.sigma0 = sigma0
        self._fn_f, self._fn_g = f, g

        grid = torch.linspace(0.0, self.T, int(knots) + 1, dtype=torch.float64)
        f_grid, g2_grid = self._f(grid), self._g2(grid)
        if not (torch.isfinite(f_grid).all() and torch.isfinite(g2_grid).all()):
            raise ValueError("f(t) and g(t) must be finite on [0, T]")

        def rhs(t: float, y: np.ndarray) -> np.ndarray:
            tt = torch.tensor([t], dtype=torch.float64)
            return np.array([float(self._f(tt)), float(self._g2(tt)) * np.exp(-2.0 * y[0])])

        sol = solve_ivp(rhs, (0.0, self.T), [0.0, sigma0**2], method="DOP853", t_eval=grid.numpy(),
                        rtol=1e-12, atol=1e-14)
        if not sol.success:
            raise ValueError(f"integrating the marginals of f, g failed: {sol.message}")
        log_alpha = torch.from_numpy(sol.y[0].copy())
        rho = torch.from_numpy(sol.y[1].copy())
        if not rho[1:].gt(0).all():
            raise ValueError("g(t) must not vanish on all of [0, t]: σ(t) would be 0 for t > 0")
        self._h = self.T / int(knots)
        self._knot_log_alpha, self._knot_dlog_alpha = log_alpha, f_grid
        self._knot_rho, self._knot_drho = rho, g2_grid * torch.exp(-2 * log_alpha)

    def _f(self, t: Tensor) -> Tensor:
        return _evaluate(self._fn_f, t, "f")

    def _g2(self, t: Tensor) -> Tensor:
        return _evaluate(self._fn_g, t, "g") ** 2

    def _log_alpha(self, t: Tensor) -> Tensor:
        return _hermite(self._knot_log_alpha, self._knot_dlog_alpha, self._h, t)

    def _log_sigma(self, t: Tensor) -> Tensor:
        rho = _hermite(self._knot_rho, self._knot_drho, self._h, t)
        return self._log_alpha(t) + 0.5 * torch.log(rho.clamp_min(0))

    def __repr__(self) -> str:
        return f"TabulatedSDE(f={self._fn_f!r}, g={self._fn_g!r}, T={self.T}, eps={self.eps}, sigma0={self.sigma0})"
