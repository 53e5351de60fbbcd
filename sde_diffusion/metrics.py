"""Distances between sample sets: MMD (Gretton et al. 2012) and sliced Wasserstein (Bonneel et al. 2015)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


def _flat(x: Tensor, name: str) -> Tensor:
    if x.dim() < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must have shape (n >= 2, ...), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x.reshape(x.shape[0], -1).double()


def mmd(x: Tensor, y: Tensor, bandwidths: Optional[Sequence[float]] = None) -> float:
    """Unbiased squared MMD with a sum of RBF kernels exp(−‖a−b‖²/(2 h²)).

    Default bandwidths are the median pairwise distance of the pooled sample times (0.25, 0.5, 1, 2, 4).
    """
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    pooled = torch.cat([x, y])
    d2 = torch.cdist(pooled, pooled).pow(2)
    if bandwidths is None:
        med = d2[d2 > 0].median().sqrt().item()
        bandwidths = [med * s for s in (0.25, 0.5, 1.0, 2.0, 4.0)]
    k = sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def sliced_wasserstein(x: Tensor, y: Tensor, projections: int = 256, generator: Optional[torch.Generator] = None) -> float:
    """Sliced 2-Wasserstein distance over random unit directions (equal sample sizes)."""
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    dirs = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ dirs, dim=0)
    py, _ = torch.sort(y @ dirs, dim=0)
    return float((px - py).pow(2).mean().sqrt())
