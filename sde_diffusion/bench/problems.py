"""Benchmark problems with known ground truth: exact-score Gaussian mixtures under a VP SDE.

A :class:`Problem` holds a mixture, its SDE, a fixed batch of starting points x_T and the reference
solution of the probability-flow ODE from those x_T: scipy's DOP853 in float64 at a very tight
tolerance from T down to eps, followed by the exact Tweedie denoise x̂_0(·, eps). Every sampler in the
benchmark also ends with a denoise at eps (σ̃_min for k-diffusion), so errors compare like with like.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import Tensor

from ..data.gmm import GaussianMixture, eight_gaussians
from ..model import ScoreModel
from ..sde import VPSDE, LinearSDE

#: the reference solve (the issue: "scipy DOP853, rtol 1e-10, float64")
REFERENCE_RTOL = 1e-10
REFERENCE_ATOL = 1e-12


class CallCounter:
    """Counts calls of a wrapped function (one call = one batched network evaluation)."""

    def __init__(self, fn: Callable):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def counted_score_model(gmm: GaussianMixture, sde: LinearSDE):
    """The exact-score :class:`ScoreModel` of ``gmm`` under ``sde`` and the counter of its evaluations."""
    counter = CallCounter(gmm.score_model(sde).net.fn)
    return ScoreModel.from_score_fn(counter, sde), counter


def scipy_pf_ode(model: ScoreModel, x_T: Tensor, rtol: float, atol: float, method: str = "DOP853",
                 dtype: torch.dtype = torch.float64, denoise: bool = True):
    """The probability-flow ODE from T to eps with scipy's ``solve_ivp`` on the flattened state (float64),
    the model evaluated in ``dtype``; then, if ``denoise``, the Tweedie x̂_0 at eps.
    Returns (x, number of drift evaluations, the denoise not included)."""
    from scipy.integrate import solve_ivp

    sde, shape = model.sde, x_T.shape
    calls = [0]

    def drift(t: float, y: np.ndarray) -> np.ndarray:
        calls[0] += 1
        t64 = torch.tensor(t, dtype=torch.float64)
        x = torch.from_numpy(y).reshape(shape).to(dtype)
        return sde.probability_flow_drift(x, t64, model._predict(x, t64).score).reshape(-1).double().numpy()

    with torch.no_grad():
        sol = solve_ivp(drift, (sde.T, sde.eps), x_T.detach().double().reshape(-1).cpu().numpy(),
                        method=method, rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"{method} PF-ODE solve failed: {sol.message}")
        x = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape).to(dtype)
        if denoise:
            x = model._predict(x, torch.tensor(sde.eps, dtype=torch.float64)).x0
    return x, calls[0]


def tweedie(gmm: GaussianMixture, sde: LinearSDE, x: Tensor, t: float) -> Tensor:
    """Exact x̂_0 = (x + σ² ∇log p_t(x))/α."""
    return gmm.score_model(sde).x0(x, t)


def solve_pf_ode(gmm: GaussianMixture, sde: LinearSDE, x_T: Tensor, rtol: float = REFERENCE_RTOL,
                 atol: float = REFERENCE_ATOL, method: str = "DOP853", denoise: bool = True):
    """The reference: float64 PF-ODE solution from T to eps with scipy (then x̂_0 at eps); returns (x, drift evaluations)."""
    return scipy_pf_ode(gmm.score_model(sde), x_T.detach().double().cpu(), rtol, atol, method, denoise=denoise)


def anisotropic_mixture(dim: int = 16, components: int = 4, min_var: float = 1e-3, max_var: float = 1.0,
                        mean_scale: float = 1.5, seed: int = 0) -> GaussianMixture:
    """K Gaussians in ``dim`` dimensions, each with covariance eigenvalues log-spaced from min_var to max_var
    (in a random order) and a random rotation: stiff near t → 0, where σ(t) falls below the smallest scale."""
    g = torch.Generator().manual_seed(seed)
    means = mean_scale * torch.randn(components, dim, generator=g, dtype=torch.float64)
    eig = torch.logspace(math.log10(min_var), math.log10(max_var), dim, dtype=torch.float64)
    covs = []
    for _ in range(components):
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))  # Haar-distributed rotation
        lam = eig[torch.randperm(dim, generator=g)]
        cov = (q * lam) @ q.T
        covs.append(0.5 * (cov + cov.T))
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    return GaussianMixture(means, torch.stack(covs), weights)


@dataclass
class Problem:
    """A mixture, its SDE, the shared starting points x_T (float32) and the float64 reference x̂_0."""

    name: str
    description: str
    gmm: GaussianMixture
    sde: LinearSDE
    x_T: Tensor
    reference: Tensor
    reference_nfe: int
    reference_seconds: float
    reference_check: Optional[float] = None  #: RMS gap to a 100× looser solve on a subset (the reference's accuracy scale)
    extra: Dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.gmm.dim

    def rms_error(self, x: Tensor) -> float:
        """Pathwise RMS error sqrt(mean (x − x_ref)²) over samples and coordinates."""
        diff = x.detach().double().cpu().reshape(self.reference.shape) - self.reference
        return float(diff.pow(2).mean().sqrt())


def make_problem(name: str, gmm: GaussianMixture, description: str, n: int, seed: int = 0,
                 sde: Optional[LinearSDE] = None, check_subset: int = 32) -> Problem:
    """Draw x_T ~ prior (float32, fixed seed) and solve the reference PF-ODE for it."""
    sde = VPSDE(0.1, 20.0, eps=1e-3) if sde is None else sde
    x_T = sde.prior_sample((n, gmm.dim), torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    reference, nfe = solve_pf_ode(gmm, sde, x_T)
    seconds = time.perf_counter() - start
    check = None
    if check_subset:
        sub = min(check_subset, n)
        loose, _ = solve_pf_ode(gmm, sde, x_T[:sub], rtol=REFERENCE_RTOL * 100, atol=REFERENCE_ATOL * 100)
        check = float((loose - reference[:sub]).pow(2).mean().sqrt())
    return Problem(name, description, gmm, sde, x_T, reference, nfe, seconds, check)


def default_problems(n2: int = 1000, n16: int = 500, dim: int = 16, seed: int = 0) -> Dict[str, Problem]:
    """(a) eight Gaussians in 2-D; (b) an anisotropic 16-D mixture (covariance eigenvalues 1e-3…1)."""
    return {
        "gmm2d": make_problem("gmm2d", eight_gaussians(), "eight Gaussians (radius 2, std 0.2), 2-D", n2, seed),
        f"gmm{dim}d": make_problem(
            f"gmm{dim}d", anisotropic_mixture(dim=dim, seed=seed),
            f"4 Gaussians, {dim}-D, random rotations, covariance eigenvalues 1e-3…1", n16, seed + 1),
    }
