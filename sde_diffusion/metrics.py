"""Distances between sample sets: MMD (Gretton et al. 2012), sliced Wasserstein (Bonneel et al. 2015) and
the Fréchet distance between Gaussian fits of feature sets (Dowson & Landau 1982; Heusel et al. 2017, FID)."""
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


def _symmetric_sqrt(mat: Tensor) -> Tensor:
    """Principal square root V diag(√max(λ, 0)) Vᵀ of a symmetric PSD matrix, from one eigendecomposition.

    Eigenvalues rounding to slightly below zero (singular or rank-deficient covariances) are clamped,
    so the result is always real, unlike a general ``scipy.linalg.sqrtm``.
    """
    eigvals, eigvecs = torch.linalg.eigh(mat)
    return (eigvecs * eigvals.clamp_min(0).sqrt()) @ eigvecs.T


def _covariance_matrix(s: Tensor, name: str, dim: int) -> Tensor:
    s = torch.as_tensor(s, dtype=torch.float64)
    if s.shape != (dim, dim):
        raise ValueError(f"{name} must be a ({dim}, {dim}) covariance matrix, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} contains NaN or Inf")
    if not torch.allclose(s, s.T, rtol=1e-6, atol=1e-10 * max(float(s.abs().max()), 1.0)):
        raise ValueError(f"{name} must be symmetric")
    return (s + s.T) / 2


def frechet_distance_gaussians(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> float:
    """Fréchet (2-Wasserstein²) distance between N(μ1, Σ1) and N(μ2, Σ2) (Dowson & Landau 1982):

        d² = ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½),

    in float64 through symmetric eigendecompositions only (Σ1^½, then the eigenvalues of the symmetric
    PSD Σ1^½ Σ2 Σ1^½), so singular covariances need no ε offset and nothing turns complex.
    Covariances are not checked for positive semi-definiteness beyond their symmetry.
    """
    mu1 = torch.as_tensor(mu1, dtype=torch.float64)
    if mu1.dim() != 1:
        raise ValueError(f"mu1 must be a 1-d mean vector, got shape {tuple(mu1.shape)}")
    dim = mu1.shape[0]
    mu2 = torch.as_tensor(mu2, dtype=torch.float64)
    if mu2.shape != (dim,):
        raise ValueError(f"mu2 must have shape ({dim},) like mu1, got {tuple(mu2.shape)}")
    if not (torch.isfinite(mu1).all() and torch.isfinite(mu2).all()):
        raise ValueError("mu1 and mu2 must be finite (got NaN or Inf)")
    s1, s2 = _covariance_matrix(s1, "s1", dim), _covariance_matrix(s2, "s2", dim)
    root1 = _symmetric_sqrt(s1)
    middle = root1 @ s2 @ root1
    cross_trace = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross_trace
    return max(float(distance), 0.0)


def gaussian_moments(feats: Tensor, name: str = "feats") -> tuple:
    """(mean, unbiased covariance) of the rows of ``feats`` (n ≥ 2, d), in float64."""
    if not isinstance(feats, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(feats).__name__}")
    if feats.dim() != 2:
        raise ValueError(f"{name} must have shape (n, d), got {tuple(feats.shape)}")
    feats = _flat(feats, name)
    mean = feats.mean(dim=0)
    centred = feats - mean
    return mean, centred.T @ centred / (feats.shape[0] - 1)


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (n, d) and (m, d) (Heusel et al. 2017):

        FD = ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½),

    μ the sample means and Σ the unbiased (n − 1) sample covariances, as in FID. The estimate is biased
    upward by finite samples (≈ tr-terms of order d/n), so compare FDs computed at the same n and m.
    """
    mu_a, cov_a = gaussian_moments(feats_a, "feats_a")
    mu_b, cov_b = gaussian_moments(feats_b, "feats_b")
    if mu_a.shape != mu_b.shape:
        raise ValueError(
            f"feats_a and feats_b must have the same feature dimension, got {mu_a.shape[0]} and {mu_b.shape[0]}"
        )
    return frechet_distance_gaussians(mu_a, cov_a, mu_b, cov_b)
