"""The reverse SDE solved by torchsde (Li et al. 2020; Kidger et al. 2021).

torchsde integrates forward in time on 2-d states, so the adapter does two things inside:

* time reversal and grid: u ∈ [0, 1] runs forward with fixed steps du = 1/steps, and t(u) is the
  monotone C¹ (PCHIP) interpolant through (k/steps, t_k) of the sampler's decreasing grid, so every
  solver step starts and ends on a grid time. With t' = dt/du < 0 the reverse SDE
  dx = [f x − g² s_θ] dt + g dW̄ becomes

      dx = [f x − g² s_θ](t(u)) t'(u) du + g(t(u)) √|t'(u)| dW_u;

* flattening: images (B, C, H, W) become (B, CHW) for torchsde and are restored afterwards.

The noise g is state-independent, so the Itô and Stratonovich forms coincide and every torchsde
method applies. The Brownian motion is seeded from ``generator`` (same generator, same samples).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torchsde
from scipy.interpolate import PchipInterpolator
from torch import Tensor

from .._checks import positive_int
from .base import NonFiniteError, Sampler, SamplingContext, finish
from .grids import GridLike, make_grid

ITO_METHODS = ("euler", "milstein", "srk")
STRATONOVICH_METHODS = ("euler_heun", "heun", "midpoint", "reversible_heun", "log_ode")
LEVY_AREA = {"srk": "space-time", "log_ode": "foster"}


class _ReverseSDE(torch.nn.Module):
    """torchsde's view of the reverse SDE in the forward variable u."""

    noise_type = "diagonal"

    def __init__(self, ctx: SamplingContext, grid: Tensor, shape, sde_type: str):
        super().__init__()
        self.sde_type = sde_type
        self.ctx, self.shape = ctx, shape
        knots = torch.linspace(0.0, 1.0, grid.numel(), dtype=torch.float64).numpy()
        self.time = PchipInterpolator(knots, grid.numpy())
        self.dtime = self.time.derivative()

    def _at(self, u: Tensor):
        uu = min(max(float(u), 0.0), 1.0)
        t, dt_du = float(self.time(uu)), float(self.dtime(uu))
        t64 = torch.tensor(t, dtype=torch.float64)
        sde = self.ctx.sde
        return t, dt_du, float(sde._f(t64)), float(sde._g2(t64))

    def f(self, u: Tensor, y: Tensor) -> Tensor:
        t, dt_du, f, g2 = self._at(u)
        if not torch.isfinite(y).all():
            raise NonFiniteError(f"TorchSDE: NaN or Inf in the state at evaluation {self.ctx.nfe} (t = {t:.6g})")
        x = y.reshape(self.shape)
        drift = f * x - g2 * self.ctx.score(x, t)
        return (drift * dt_du).reshape(y.shape)

    def g(self, u: Tensor, y: Tensor) -> Tensor:
        _, dt_du, _, g2 = self._at(u)
        return torch.full_like(y, (g2 * abs(dt_du)) ** 0.5)


class TorchSDE(Sampler):
    """Reverse-SDE sampling with any torchsde method: euler, milstein, srk, euler_heun, heun, midpoint, reversible_heun, log_ode."""

    name = "torchsde"

    def __init__(
        self,
        method: str = "euler",
        steps: int = 1000,
        grid: GridLike = "uniform",
        denoise: bool = True,
        options: Optional[Dict[str, Any]] = None,
        thresholding=None,
    ):
        if method not in ITO_METHODS + STRATONOVICH_METHODS:
            raise ValueError(f"method must be one of {sorted(ITO_METHODS + STRATONOVICH_METHODS)}, got {method!r}")
        positive_int(steps, "steps")
        self.method, self.steps, self.grid, self.denoise = method, int(steps), grid, bool(denoise)
        self.options = dict(options or {})
        self.thresholding = thresholding
        if method == "milstein":
            self.options.setdefault("grad_free", True)  # g does not depend on x: the correction vanishes

    def _run(self, ctx, x):
        grid = make_grid(self.grid, ctx.sde, self.steps)
        n_steps = grid.numel() - 1
        sde_type = "ito" if self.method in ITO_METHODS else "stratonovich"
        model = _ReverseSDE(ctx, grid, x.shape, sde_type)
        y0 = x.reshape(x.shape[0], -1)
        if isinstance(ctx.generator, (list, tuple)):
            raise ValueError(f"{type(self).__name__} draws one Brownian path for the whole batch: generator must be a single torch.Generator, not a list")
        entropy = int(torch.randint(0, 2**62, (1,), generator=ctx.generator)) if ctx.generator is not None else None
        bm = torchsde.BrownianInterval(
            t0=0.0, t1=1.0, size=y0.shape, dtype=y0.dtype, device=y0.device, entropy=entropy,
            levy_area_approximation=LEVY_AREA.get(self.method, "none"),
        )
        us = torch.tensor([0.0, 1.0], dtype=y0.dtype, device=y0.device)
        y = torchsde.sdeint(model, y0, us, bm=bm, method=self.method, dt=1.0 / n_steps, options=self.options)[-1]
        x = y.reshape(x.shape)
        ctx.visit(x, n_steps - 1, float(grid[0]), float(grid[-1]))
        return finish(ctx, x, grid, self.denoise)
