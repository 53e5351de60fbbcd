"""The probability-flow ODE (Song et al. 2021, eq. 13) integrated with torchdiffeq:

    dx/dt = f(t) x − ½ g(t)² s_θ(x, t),   from T down to eps.

Every torchdiffeq method works: adaptive ones (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun,
scipy_solver) use rtol/atol; fixed-grid ones (euler, midpoint, heun2, heun3, rk4, explicit_adams,
implicit_adams, fixed_adams) step on the sampler's time grid. NFE is counted here, not by torchdiffeq.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor
from torchdiffeq import odeint
from torchdiffeq._impl.odeint import SOLVERS

from .._checks import positive, positive_int
from .grids import GridLike, make_grid
from .base import NonFiniteError, Sampler, finish

FIXED_GRID_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")
ADAPTIVE_METHODS = tuple(m for m in SOLVERS if m not in FIXED_GRID_METHODS)


class ProbabilityFlowODE(Sampler):
    """Deterministic sampling by solving the probability-flow ODE with torchdiffeq."""

    name = "probability_flow"

    def __init__(
        self,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        steps: int = 100,
        grid: GridLike = "uniform",
        denoise: bool = True,
        options: Optional[Dict[str, Any]] = None,
        thresholding=None,
    ):
        if method not in SOLVERS:
            raise ValueError(f"method must be one of torchdiffeq's {sorted(SOLVERS)}, got {method!r}")
        positive(rtol, "rtol")
        positive(atol, "atol")
        positive_int(steps, "steps")
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)
        self.steps, self.grid, self.denoise = int(steps), grid, bool(denoise)
        self.options = dict(options or {})
        self.thresholding = thresholding

    @property
    def fixed_grid(self) -> bool:
        return self.method in FIXED_GRID_METHODS

    def _run(self, ctx, x):
        sde = ctx.sde
        grid = make_grid(self.grid, sde, self.steps) if self.fixed_grid else torch.tensor([sde.T, sde.eps], dtype=torch.float64)

        t_end = float(grid[-1])

        def drift(t: Tensor, y: Tensor) -> Tensor:
            t64 = t.detach().to(device="cpu", dtype=torch.float64).clamp(t_end, sde.T)
            if not torch.isfinite(y).all():
                raise NonFiniteError(f"{type(self).__name__}: NaN or Inf in the state at evaluation {ctx.nfe} (t = {float(t64):.6g})")
            score = ctx.score(y, float(t64))
            f, g2 = float(sde._f(t64)), float(sde._g2(t64))
            return f * y - 0.5 * g2 * score

        options = dict(self.options)
        if self.fixed_grid:
            options.setdefault("grid_constructor", lambda func, y0, t: grid.to(y0.device))
        ends = grid[[0, -1]]
        x = odeint(drift, x, ends.to(x.device), method=self.method, rtol=self.rtol, atol=self.atol, options=options)[-1]
        # a fixed-grid solver visits every time of its grid (an adaptive one: just T and eps)
        ctx.visit(x, len(grid) - 2, float(ends[0]), t_end)
        return finish(ctx, x, grid, self.denoise)
