"""Data: Gaussian mixtures (samples, density, closed-form probability flow) and the 2-D toys."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import solve_ivp
from scipy.special import logsumexp

import sde_diffusion as sd
from sde_diffusion.data import GaussianMixture

F64 = torch.float64

MEANS = np.array([[1.0, -0.5, 0.3], [-1.5, 1.0, 0.0], [0.2, 2.0, -1.0]])
COVS = np.array([
    [[0.3, 0.1, 0.0], [0.1, 0.2, 0.05], [0.0, 0.05, 0.1]],
    [[0.05, 0.0, 0.0], [0.0, 0.4, -0.1], [0.0, -0.1, 0.3]],
    [[0.2, -0.15, 0.0], [-0.15, 0.25, 0.0], [0.0, 0.0, 0.5]],
])
WEIGHTS = np.array([0.5, 0.3, 0.2])


def _gmm():
    return GaussianMixture(MEANS, COVS, WEIGHTS)


# --------------------------------------------------------------------------------------------
# GaussianMixture
# --------------------------------------------------------------------------------------------
def test_gmm_sample_moments_match_mixture():
    gmm = _gmm()
    n = 200_000
    x = gmm.sample(n, generator=torch.Generator().manual_seed(0), dtype=F64).numpy()
    assert x.shape == (n, 3)
    mean = WEIGHTS @ MEANS
    cov = sum(w * (c + np.outer(m, m)) for w, m, c in zip(WEIGHTS, MEANS, COVS)) - np.outer(mean, mean)
    # mean: 5 standard errors per coordinate
    se_mean = np.sqrt(np.diag(cov) / n)
    assert (np.abs(x.mean(0) - mean) <= 5 * se_mean).all(), (x.mean(0), mean)
    # covariance: 5 standard errors of each entry, estimated from the products' spread
    centred = x - mean
    prods = centred[:, :, None] * centred[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    assert (np.abs(prods.mean(0) - cov) <= 5 * se_cov).all(), (prods.mean(0), cov)
    # and the first coordinate's marginal law: Kolmogorov–Smirnov against the mixture CDF
    cdf = lambda v: sum(w * stats.norm.cdf(v, m[0], math.sqrt(c[0, 0])) for w, m, c in zip(WEIGHTS, MEANS, COVS))
    ks = stats.kstest(x[:, 0], cdf)
    assert ks.statistic < 1.95 / math.sqrt(n)  # the 0.1 % critical value


def test_gmm_sample_reproducible_and_dtype():
    gmm = _gmm()
    a = gmm.sample(100, generator=torch.Generator().manual_seed(3))
    b = gmm.sample(100, generator=torch.Generator().manual_seed(3))
    c = gmm.sample(100, generator=torch.Generator().manual_seed(4))
    assert a.dtype == torch.float32 and a.shape == (100, 3)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gmm_log_prob_matches_scipy_mixture():
    gmm = _gmm()
    x = np.random.default_rng(0).normal(size=(50, 3)) * 1.5
    comps = [math.log(w) + stats.multivariate_normal(m, c).logpdf(x) for w, m, c in zip(WEIGHTS, MEANS, COVS)]
    expected = logsumexp(np.stack(comps), axis=0)
    np.testing.assert_allclose(gmm.log_prob(torch.from_numpy(x)).numpy(), expected, rtol=1e-12)
    # unnormalised weights are normalised; diagonal and scalar covariances are accepted
    diag = GaussianMixture(MEANS[:2], [[0.3, 0.2, 0.1], [0.5, 0.4, 0.3]], [2.0, 6.0])
    comps = [math.log(w) + stats.multivariate_normal(m, np.diag(c)).logpdf(x)
             for w, m, c in zip([0.25, 0.75], MEANS[:2], [[0.3, 0.2, 0.1], [0.5, 0.4, 0.3]])]
    np.testing.assert_allclose(diag.log_prob(torch.from_numpy(x)).numpy(), logsumexp(np.stack(comps), axis=0), rtol=1e-12)
    iso = GaussianMixture(MEANS[:1], [0.7])
    np.testing.assert_allclose(iso.log_prob(torch.from_numpy(x)).numpy(), stats.multivariate_normal(MEANS[0], 0.7 * np.eye(3)).logpdf(x), rtol=1e-12)


def test_gmm_rejects_bad_parameters():
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([1.0, 2.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture([[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])  # not positive definite
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture([[0.0, 0.0]], [[[1.0, 0.1], [0.0, 1.0]]])  # not symmetric
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [1.0, -1.0])


# --------------------------------------------------------------------------------------------
# closed-form probability flow of a single Gaussian
# --------------------------------------------------------------------------------------------
ONE_MEAN = np.array([[0.8, -1.2]])
ONE_COV = np.array([[[0.5, 0.35], [0.35, 0.4]]])  # anisotropic, rotated

FLOW_SDES = {
    "vp": sd.VPSDE(),
    "ve": sd.VESDE(0.01, 50.0),
    "cosine": sd.CosineVPSDE(),
    "coefficients": sd.LinearSDE.from_coefficients(lambda t: -1.0 - 3.0 * t, lambda t: torch.sqrt(2.0 + 6.0 * t + torch.cos(4 * t))),
}


def _pf_ode_solution(gmm, sde, x: torch.Tensor, t_from: float, t_to: float, scale: float) -> torch.Tensor:
    """dx/dt = f x − ½ g² ∇log p_t(x), integrated with scipy's DOP853 (rtol 1e-10)."""
    shape = x.shape

    def rhs(t, y):
        xt = torch.from_numpy(y).reshape(shape)
        tt = torch.tensor(t, dtype=F64)
        drift = sde.f(tt) * xt - 0.5 * sde.g2(tt) * gmm.score(xt, tt, sde)
        return drift.reshape(-1).numpy()

    sol = solve_ivp(rhs, (t_from, t_to), x.reshape(-1).numpy(), method="DOP853", rtol=1e-10, atol=1e-10 * scale)
    assert sol.success
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)


@pytest.mark.parametrize("name", list(FLOW_SDES))
@pytest.mark.parametrize("t_from,t_to", [(0.9, 0.05), (0.1, 0.8)], ids=["backward", "forward"])
def test_flow_solves_probability_flow_ode(name, t_from, t_to):
    sde = FLOW_SDES[name]
    gmm = GaussianMixture(ONE_MEAN, ONE_COV)
    a0, s0 = float(sde.alpha(t_from)), float(sde.sigma(t_from))
    gen = torch.Generator().manual_seed(7)
    x = a0 * torch.from_numpy(ONE_MEAN) + math.sqrt(a0**2 * 0.9 + s0**2) * torch.randn(6, 2, generator=gen, dtype=F64)
    scale = max(1.0, s0, float(sde.sigma(t_to)))
    ode = _pf_ode_solution(gmm, sde, x, t_from, t_to, scale)
    closed = gmm.flow(x, t_from, t_to, sde)
    torch.testing.assert_close(closed, ode, rtol=1e-7, atol=1e-7 * scale)
    # the flow is invertible: going back returns the start
    torch.testing.assert_close(gmm.flow(closed, t_to, t_from, sde), x, rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.parametrize("name", list(FLOW_SDES))
def test_flow_maps_marginal_moments(name):
    sde = FLOW_SDES[name]
    gmm = GaussianMixture(ONE_MEAN, ONE_COV)
    mu, cov = ONE_MEAN[0], ONE_COV[0]
    t_from, t_to = 0.85, 0.2
    a0, s0 = float(sde.alpha(t_from)), float(sde.sigma(t_from))
    a1, s1 = float(sde.alpha(t_to)), float(sde.sigma(t_to))
    cov0, cov1 = a0**2 * cov + s0**2 * np.eye(2), a1**2 * cov + s1**2 * np.eye(2)
    # the flow is affine, x ↦ A x + b: its moments push-forward exactly
    b = gmm.flow(torch.zeros(1, 2, dtype=F64), t_from, t_to, sde)[0].numpy()
    A = (gmm.flow(torch.eye(2, dtype=F64), t_from, t_to, sde).numpy() - b).T
    np.testing.assert_allclose(A @ (a0 * mu) + b, a1 * mu, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(A @ cov0 @ A.T, cov1, rtol=1e-10, atol=1e-12)
    # and on samples of the t_from marginal (Monte Carlo, 5 standard errors)
    n = 50_000
    L = np.linalg.cholesky(cov0)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=F64).numpy()
    x0 = a0 * mu + z @ L.T
    y = gmm.flow(torch.from_numpy(x0), t_from, t_to, sde).numpy()
    assert (np.abs(y.mean(0) - a1 * mu) <= 5 * np.sqrt(np.diag(cov1) / n)).all()
    centred = y - a1 * mu
    prods = centred[:, :, None] * centred[:, None, :]
    assert (np.abs(prods.mean(0) - cov1) <= 5 * prods.std(0) / math.sqrt(n)).all()


def test_flow_needs_a_single_gaussian():
    with pytest.raises(ValueError, match="single Gaussian"):
        _gmm().flow(torch.zeros(2, 3), 0.5, 0.1, sd.VPSDE())


# --------------------------------------------------------------------------------------------
# 2-D toy datasets
# --------------------------------------------------------------------------------------------
TOYS = ["moons", "swiss_roll", "eight_gaussians", "checkerboard"]


@pytest.mark.parametrize("name", TOYS)
def test_toy_shape_dtype_and_reproducibility(name):
    assert name in sd.data.TOY_DATASETS
    a = sd.data.toy_sample(name, 1001, generator=torch.Generator().manual_seed(5))
    b = sd.data.toy_sample(name, 1001, generator=torch.Generator().manual_seed(5))
    c = sd.data.toy_sample(name, 1001, generator=torch.Generator().manual_seed(6))
    assert a.shape == (1001, 2) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    direct = sd.data.TOY_DATASETS[name](1001, torch.Generator().manual_seed(5))
    assert torch.equal(a, direct)


def test_toy_sample_bad_arguments():
    with pytest.raises(ValueError, match="name"):
        sd.data.toy_sample("spirals", 10)
    with pytest.raises(ValueError, match="n must"):
        sd.data.toy_sample("moons", 0)


def _counts_close(counts: np.ndarray, n: int, k: int):
    """Multinomial counts of k equally likely cells, each within 5 standard errors of n/k."""
    p = 1.0 / k
    assert (np.abs(counts - n * p) <= 5 * math.sqrt(n * p * (1 - p))).all(), counts


def test_checkerboard_geometry():
    n = 40_000
    x = sd.data.checkerboard(n, torch.Generator().manual_seed(0)).double().numpy()
    assert (x >= -2).all() and (x <= 2).all()
    col, row = np.floor(x[:, 0] + 2).astype(int), np.floor(x[:, 1] + 2).astype(int)
    # every point is on a black square (row + column even), all 8 black squares equally filled
    assert ((row + col) % 2 == 0).all()
    cells = np.bincount((row * 4 + col)[(row + col) % 2 == 0], minlength=16)
    _counts_close(cells[[r * 4 + c for r in range(4) for c in range(4) if (r + c) % 2 == 0]], n, 8)
    # uniform inside each square
    frac = x - np.floor(x)
    assert np.abs(frac.mean(0) - 0.5).max() < 5 * math.sqrt(1 / 12 / n)


def test_eight_gaussians_geometry():
    n = 40_000
    x = sd.data.toy_sample("eight_gaussians", n, torch.Generator().manual_seed(0)).double().numpy()
    angles = np.arange(8) * 2 * np.pi / 8
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    nearest = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), 1)
    _counts_close(np.bincount(nearest, minlength=8), n, 8)
    resid = x - centres[nearest]
    assert resid.std() == pytest.approx(0.2, rel=0.02)
    assert np.abs(resid.mean(0)).max() < 5 * 0.2 / math.sqrt(n)
    radius = np.linalg.norm(x, axis=1)
    # E|x| for N(μ, 0.04 I) with |μ| = 2 is ≈ 2 + 0.04/(2·2)
    assert radius.mean() == pytest.approx(2.01, abs=0.005)
    # and it is the exact-score mixture of the same name
    gmm = sd.data.eight_gaussians()
    np.testing.assert_allclose(gmm.means.numpy(), centres, atol=1e-12)
    np.testing.assert_allclose(gmm.covs.numpy(), np.broadcast_to(0.04 * np.eye(2), (8, 2, 2)), atol=1e-12)


def test_moons_geometry():
    n = 20_000
    x = sd.data.moons(n, torch.Generator().manual_seed(0)).double().numpy()
    upper, lower = x[: n // 2], x[n // 2:]
    # two half circles of radius 2 (after the ×2 scaling) about (−1, −0.5) and (1, 0.5), noise std 0.1
    r_up = np.linalg.norm(upper - [-1.0, -0.5], axis=1)
    r_lo = np.linalg.norm(lower - [1.0, 0.5], axis=1)
    for r in (r_up, r_lo):
        assert r.mean() == pytest.approx(2.0, abs=0.01)
        assert 0.08 < r.std() < 0.12
    # the upper moon opens downwards, the lower one upwards
    assert (upper[:, 1] > -0.5 - 0.6).all() and (lower[:, 1] < 0.5 + 0.6).all()
    assert np.median(upper[:, 1]) > 0.5 and np.median(lower[:, 1]) < -0.5


def test_swiss_roll_geometry():
    n = 20_000
    x = sd.data.swiss_roll(n, torch.Generator().manual_seed(0)).double().numpy() * 5.0
    r = np.linalg.norm(x, axis=1)
    phi = np.arctan2(x[:, 1], x[:, 0])
    # on the spiral r = θ, θ ∈ [1.5π, 4.5π], θ ≡ φ (mod 2π): distance to the nearest turn is noise-sized
    # θ = φ + 2πk with k ∈ {1, 2} covers [π, 5π] ⊃ [1.5π, 4.5π]
    theta = phi[:, None] + 2 * np.pi * np.array([1, 2])[None, :]
    gap = np.abs(r[:, None] - theta).min(1)
    assert np.quantile(gap, 0.99) < 0.5
    assert r.min() > 1.5 * np.pi - 0.6 and r.max() < 4.5 * np.pi + 0.6
