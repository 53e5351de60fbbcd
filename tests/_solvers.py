"""Shared helpers for the fast-solver tests (orders, peers, GMM, thresholding, grids).

Not a test module. Everything here is a reference written from the math alone: the exact
probability-flow map of one Gaussian (``GaussianMixture.flow``) and a least-squares fit of the
log–log error curve.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

import sde_diffusion as sd
from sde_diffusion.data.gmm import GaussianMixture

F64 = torch.float64




def sdes():
    """The schedules every solver is checked on: continuous VP, VE and DDPM's discrete (piecewise-linear log α) VP."""
    return {"vp": sd.VPSDE(), "ve": sd.VESDE(), "ddpm": sd.DiscreteVPSDE.linear()}


def anisotropic_gaussian(dim: int = 3, seed: int = 0) -> GaussianMixture:
    """One rotated Gaussian with variances 0.04, 0.3, 1.5 (stiff near t → 0) and a non-zero mean."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))
    variances = torch.logspace(math.log10(0.04), math.log10(1.5), dim, dtype=F64)
    cov = q @ torch.diag(variances) @ q.T
    mean = torch.linspace(0.5, -1.0, dim, dtype=F64)
    return GaussianMixture(mean[None], cov[None])


def prior_draw(sde, n: int, dim: int, seed: int = 1) -> torch.Tensor:
    return sde.prior_sample((n, dim), torch.Generator().manual_seed(seed), dtype=F64)


def pathwise_rms(sampler, gm: GaussianMixture, sde, x_T: torch.Tensor) -> float:
    """RMS distance between the sampler's x(eps) (no final denoise) and the exact PF-ODE map from x_T."""
    out = sampler.sample(gm.score_model(sde), x_T=x_T)
    exact = gm.flow(x_T, sde.T, sde.eps, sde)
    return float((out.x - exact).pow(2).mean().sqrt())


def fitted_order(steps: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope p of log error = c − p log steps."""
    return float(-np.polyfit(np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float)), 1)[0])


def sigma_tilde(sde, t) -> torch.Tensor:
    """σ̃(t) = σ(t)/α(t) = e^{−λ(t)} from the public API, float64."""
    t = torch.as_tensor(t, dtype=F64)
    return sde.sigma(t) / sde.alpha(t)
