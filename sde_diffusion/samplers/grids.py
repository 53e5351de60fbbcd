"""Time discretisations: decreasing float64 grids from T down to the SDE's eps.

A grid is a function ``(sde, steps) -> Tensor`` of ``steps + 1`` strictly decreasing times; every
fixed-step sampler takes a grid name, such a function, or an explicit tensor of times.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Union

import torch
from torch import Tensor

from ..sde import LinearSDE

GridFn = Callable[[LinearSDE, int], Tensor]
GridLike = Union[str, GridFn, Tensor]


def uniform(sde: LinearSDE, steps: int) -> Tensor:
    """Uniform in t: t_i = T − i (T − eps)/steps (score_sde, DDPM)."""
    return torch.linspace(sde.T, sde.eps, steps + 1, dtype=torch.float64)


def quadratic(sde: LinearSDE, steps: int) -> Tensor:
    """Uniform in √t, so steps are finer near t = eps (DDIM's "quadratic" skip)."""
    u = torch.linspace(sde.T**0.5, sde.eps**0.5, steps + 1, dtype=torch.float64)
    return u**2


def log_snr(sde: LinearSDE, steps: int) -> Tensor:
    """Uniform in λ = log(α/σ) (DPM-Solver's "logSNR" spacing)."""
    lam_T, lam_eps = sde._log_snr(torch.tensor([sde.T, sde.eps], dtype=torch.float64)).tolist()
    lam = torch.linspace(lam_T, lam_eps, steps + 1, dtype=torch.float64)
    t = sde._t_of_log_snr(lam).clamp(sde.eps, sde.T)
    t[0], t[-1] = sde.T, sde.eps  # exact end points despite the round trip through λ
    return t


def karras(rho: float = 7.0) -> GridFn:
    """EDM's grid (Karras et al. 2022, eq. 5) in σ̃ = σ/α: σ̃_i = (σ̃_max^{1/ρ} + i/N (σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ."""
    if not float(rho) > 0:
        raise ValueError(f"rho must be positive, got {rho}")

    def grid(sde: LinearSDE, steps: int) -> Tensor:
        lam_T, lam_eps = sde._log_snr(torch.tensor([sde.T, sde.eps], dtype=torch.float64)).tolist()
        inv_max, inv_min = math.exp(-lam_T / rho), math.exp(-lam_eps / rho)  # σ̃^{1/ρ} with σ̃ = e^{−λ}
        ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        lam = -rho * torch.log(inv_max + ramp * (inv_min - inv_max))
        t = sde._t_of_log_snr(lam).clamp(sde.eps, sde.T)
        t[0], t[-1] = sde.T, sde.eps
        return t

    grid.__name__ = f"karras_rho{rho:g}"
    return grid


GRIDS: Dict[str, GridFn] = {"uniform": uniform, "quadratic": quadratic, "log_snr": log_snr, "karras": karras(7.0)}


def register_grid(name: str, fn: GridFn) -> None:
    """Make ``fn`` available to every sampler as ``grid=name``."""
    GRIDS[name] = fn


def make_grid(grid: GridLike, sde: LinearSDE, steps: int) -> Tensor:
    """Resolve ``grid`` (name, function or explicit times) to a validated decreasing float64 tensor."""
    if isinstance(grid, Tensor):
        ts = grid.detach().to(device="cpu", dtype=torch.float64)
    elif isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"grid must be one of {sorted(GRIDS)} or a tensor of times, got {grid!r}")
        ts = GRIDS[grid](sde, steps)
    elif callable(grid):
        ts = torch.as_tensor(grid(sde, steps), dtype=torch.float64)
    else:
        raise TypeError(f"grid must be a name, a function (sde, steps) -> times, or a tensor, got {type(grid).__name__}")
    return validate_grid(ts, sde)


def validate_grid(ts: Tensor, sde: LinearSDE) -> Tensor:
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"grid must be a 1-d tensor of at least 2 times, got shape {tuple(ts.shape)}")
    if not torch.isfinite(ts).all():
        raise ValueError("grid contains NaN or Inf")
    if not (ts[1:] < ts[:-1]).all():
        raise ValueError(f"grid must be strictly decreasing (sampling runs from T to eps), got {ts.tolist()[:8]}...")
    if ts[-1] <= 0 or ts[0] > sde.T * (1 + 1e-9):
        raise ValueError(f"grid times must lie in (0, T={sde.T:g}] (the score is singular at t = 0), got [{float(ts[-1]):.6g}, {float(ts[0]):.6g}]")
    return ts


def optimize(sampler, model, steps: int, shape: Sequence[int], generator: Optional[torch.Generator] = None, **options) -> Tensor:
    """A time grid fitted to ``model`` for ``sampler`` at ``steps`` steps (Xue et al. 2024; ``method="gits"``: Chen
    et al. 2024; ``method="ays"``: Sabour et al. 2024, Align Your Steps).

    ``shape`` = (n_calibration, *sample shape), as ``sample(shape=...)`` takes it: that many calibration x_T are drawn
    from ``generator`` (never use it for the evaluation x_T). The result is an ordinary grid tensor for ``grid=``;
    see :func:`sde_diffusion.samplers.grid_optimize.optimize` for the options and the cost report.
    """
    from .grid_optimize import optimize as fit

    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (n_calibration, *sample_shape), got {shape}")
    return fit(sampler, model, steps, shape[1:], generator=generator, n_calibration=shape[0], **options)
