"""Distances between sample sets: MMD (Gretton et al. 2012), sliced Wasserstein (Bonneel et al. 2015), the
Fréchet distance between Gaussian fits of feature sets (Dowson & Landau 1982; Heusel et al. 2017, FID) and the
energy distance (Székely & Rizzo 2013); and, against a known density p, the excess cross-entropy E_q[−log p] − H(p)."""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence, Union

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


# ---------------------------------------------------------------------------------------------
# sample quality against a known density (stochastic samplers on exact-score mixtures)
# ---------------------------------------------------------------------------------------------
class Estimate(NamedTuple):
    """A Monte-Carlo estimate and its standard error."""

    value: float
    se: float


#: pairwise distances computed per block of at most this many entries (float64: 128 MiB)
_BLOCK_ENTRIES = 1 << 24


def _distance_sum(a: Tensor, b: Tensor) -> float:
    """Σ_ij ‖a_i − b_j‖ over all pairs, in blocks of rows so memory stays bounded."""
    rows = max(1, _BLOCK_ENTRIES // b.shape[0])
    return float(sum(torch.cdist(a[i:i + rows], b).sum() for i in range(0, a.shape[0], rows)))


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance (Székely & Rizzo 2013) between the laws of x (n, ...) and y (m, ...), unbiased U-statistic:

        D² = 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖,

    the within-sample means over distinct pairs (n(n − 1) and m(m − 1) terms). D² ≥ 0 with equality iff the laws
    agree; the estimate is unbiased, so it is zero-mean (and may be negative) for equal laws. O(nm) time, computed
    blockwise in float64.
    """
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    n, m = x.shape[0], y.shape[0]
    cross = _distance_sum(x, y) / (n * m)
    within_x = _distance_sum(x, x) / (n * (n - 1))  # the diagonal is zero
    within_y = _distance_sum(y, y) / (m * (m - 1))
    return 2 * cross - within_x - within_y


def cross_entropy(samples: Tensor, log_prob: Callable[[Tensor], Tensor]) -> Estimate:
    """E_q[−log p] from samples of q, with the standard error sd(−log p)/√n of independent samples."""
    samples = _flat(samples, "samples").reshape(samples.shape[0], *samples.shape[1:])
    if not callable(log_prob):
        raise TypeError(f"log_prob must be a callable x -> log p(x) of shape (n,), got {type(log_prob).__name__}")
    nll = -torch.as_tensor(log_prob(samples)).double().reshape(-1)
    if nll.shape[0] != samples.shape[0]:
        raise ValueError(f"log_prob must return one value per sample ({samples.shape[0]}), got shape {tuple(nll.shape)}")
    if not torch.isfinite(nll).all():
        raise ValueError("log_prob returned NaN or ±Inf for some samples (a sample outside the support?)")
    return Estimate(float(nll.mean()), float(nll.std() / math.sqrt(nll.shape[0])))


def excess_cross_entropy(samples: Tensor, log_prob: Callable[[Tensor], Tensor],
                         reference_samples: Union[Tensor, Estimate]) -> Estimate:
    """ΔH = E_q[−log p] − E_p[−log p] (nats), q the law of ``samples``, p the density ``log_prob``, with its standard error.

    The second term, the entropy H(p), comes from ``reference_samples`` (exact draws of p) or from an
    :class:`Estimate` of it computed once (``cross_entropy(exact_draws, log_prob)``); the two samples are independent,
    so se = √(var_q(log p)/n + var_p(log p)/m). When an exact sampler would not output draws of p itself (one that
    ends with a Tweedie denoise outputs E[x_0 | x_eps]), pass draws of that exact output instead: the reference term
    is then E_ref[−log p] and ΔH is zero for exact sampling all the same.

    ΔH is *not* a divergence: ΔH = KL(q‖p) + H(q) − H(p), so it is zero for q = p but also negative when q is more
    concentrated than p on p's high-density regions (under-dispersed modes), and blind to errors that leave the mean
    of log p unchanged (mass moved between modes of equal density). Pair it with a proper distance (e.g.
    :func:`energy_distance`) or a per-mode check. What it buys: it is linear in q, so a small error δ in q moves it at
    first order in δ, its noise falls as 1/√n, and it costs one density evaluation per sample.
    """
    q = cross_entropy(samples, log_prob)
    if isinstance(reference_samples, Estimate):
        p = reference_samples
    elif isinstance(reference_samples, Tensor):
        p = cross_entropy(reference_samples, log_prob)
    else:
        raise TypeError("reference_samples must be a tensor of exact samples of p or an Estimate of E_p[−log p], "
                        f"got {type(reference_samples).__name__}")
    return Estimate(q.value - p.value, math.hypot(q.se, p.se))
