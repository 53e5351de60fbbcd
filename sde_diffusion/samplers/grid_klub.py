"""Align Your Steps (Sabour, Fidler & Kreis 2024, "Align Your Steps: Optimizing Sampling Schedules in Diffusion
Models", ICML): the grid that minimises a KL-divergence upper bound (KLUB) between the reverse SDE and its
linearisation on the grid.

In the VE-equivalent variables of any linear SDE, x̃ = x/α and σ̃ = σ/α = e^{−λ} (Karras et al. 2022), the
denoiser is D(x̃, σ̃) = x̂_0(α x̃, t(σ̃)). A first-order stochastic solver freezes it over each step,
D(x̃_σ, σ) ≈ D(x̃_{σ_i}, σ_i) for σ ∈ [σ_{i+1}, σ_i], and Girsanov's theorem bounds the KL divergence between
the path measures of the exact and the frozen reverse SDE by (AYS §3.2; constant factors dropped)

    KLUB = Σ_i ∫_{σ_{i+1}}^{σ_i} σ^{−3} E ‖D(x̃_σ, σ) − D(x̃_{σ_i}, σ_i)‖² dσ,

with x̃_σ = x_0 + σ ε and x̃_{σ_i} = x̃_σ + √(σ_i² − σ²) ε′ coupled by the forward process, x_0 from the data (here
the model's own samples: reference-flow solves from p_T). Each interval's integral is taken in u = log σ
(dσ/σ³ = du/σ²) by Gauss–Legendre with fixed ε, ε′ (common random numbers), so the estimate is a smooth
function of the grid, and :func:`sde_diffusion.samplers.grid_optimize.optimize` searches it as it searches the
pathwise error. The objective is AYS's; their coordinate-wise search is replaced by that search.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import Tensor

from ..interop import KDiffusionDenoiser
from ..model import ScoreModel

#: Gauss–Legendre nodes per interval of the KLUB estimate
KLUB_NODES = 4


def klub_terms(model: ScoreModel, grid: Tensor, x0: Tensor, noise: Tensor, bridge_noise: Tensor,
               nodes: int = KLUB_NODES, model_kwargs: Optional[Dict[str, Any]] = None) -> Tensor:
    """The KLUB of each step of the decreasing ``grid`` (shape (steps,), per coordinate of x_0), estimated on the
    rows of ``x0`` with the fixed draws ``noise`` (ε) and ``bridge_noise`` (ε′) of x0's shape; two batched
    model calls of steps · nodes · len(x0) rows."""
    sde, n = model.sde, x0.shape[0]
    log_sigma = -sde._log_snr(grid.double())  # log σ̃_i, decreasing
    steps = len(grid) - 1
    u_k, w_k = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(nodes))
    hi, lo = log_sigma[:-1, None], log_sigma[1:, None]  # (steps, 1)
    u = lo + (hi - lo) * (u_k + 1) / 2  # (steps, nodes): log σ at the nodes
    weight = (hi - lo) / 2 * w_k * torch.exp(-2 * u)  # du/σ² of each node
    node_shape = (steps, nodes, *([1] * x0.dim()))  # one scalar per node, against (steps, nodes, *x0.shape)
    sigma, sigma_i = u.exp().reshape(node_shape), hi.exp().expand_as(u).reshape(node_shape)
    x_sigma = x0 + sigma * noise
    x_i = x_sigma + (sigma_i**2 - sigma**2).clamp_min(0).sqrt() * bridge_noise
    rows = lambda v: v.reshape(steps * nodes * n, *x0.shape[1:])  # noqa: E731
    per_row = lambda v: v.reshape(steps, nodes, 1).expand(steps, nodes, n).reshape(-1)  # noqa: E731
    denoise = KDiffusionDenoiser(model)  # D(x̃, σ̃) = x̂_0(α x̃, t(σ̃))
    kwargs = model_kwargs or {}
    gap = denoise(rows(x_sigma), per_row(u).exp(), **kwargs) - \
        denoise(rows(x_i), per_row(hi.expand_as(u)).exp(), **kwargs)
    mean_square = gap.reshape(steps, nodes, -1).pow(2).mean(2)  # (steps, nodes)
    return (weight * mean_square).sum(1)

