"""Measured orders of convergence against closed-form solutions (float64).

(a) Deterministic solvers vs the exact probability-flow map ``GaussianMixture.flow(x_T, T, eps, sde)``
    for single anisotropic Gaussian data (std 0.79 and 0.42 along the eigen-directions), compared at
    t = eps without the final denoise. The log–log slope of max |error| against the step count is
    fitted by least squares over four step counts where the asymptotic regime is reached.
    Measured on the uniform grid (VP: β ∈ [0.1, 20], eps = 1e-3; VE: σ ∈ [0.01, 50], eps = 1e-5):

        DDIM(η=0)  VP 0.98   VE 0.98        euler      VP 0.97   VE 0.94
        midpoint   VP 2.10   VE 2.16        heun2      VP 1.94   VE 2.14
        rk4        VP 3.89   VE 4.26        (bands: ±0.3; rk4 ±0.5 and > 3.5)

(b) Euler–Maruyama weak order: bias of the final mean and variance against the exact marginal at
    eps, N(α μ, α² s² + σ²), for 1-D Gaussian data with 4·10⁵ paths. x_T is drawn from the exact p_T
    (not the prior), so the only error is the discretisation. The bias is also checked against the
    closed-form moments of the EM recursion itself (for linear scores the EM chain is Gaussian and its
    mean/variance follow a scalar recursion), within Monte Carlo error.
    Measured slopes (VP, quadratic grid, 16/32/64 steps): mean 0.98, variance 1.06 (band 0.7–1.3).

(c) DDPM ancestral sampling and the reverse-diffusion predictor discretise the same reverse process on
    the same grid (DiscreteVPSDE.linear(), t_i = (i+1)/1000): their output distributions agree
    (MMD below the measured noise floor; Gaussian means/variances within Monte Carlo error).
"""
from __future__ import annotations

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion.data import GaussianMixture
from sde_diffusion.samplers.base import intervals
from sde_diffusion.samplers.grids import make_grid

from _sampler_reference import N_SAMPLES, mmd_stat, noise_floor, reference_gmm


def loglog_slope(steps, errors) -> float:
    """Least-squares slope p of log(error) = c − p log(steps)."""
    x = torch.log(torch.tensor(steps, dtype=torch.float64))
    y = torch.log(torch.tensor(errors, dtype=torch.float64))
    x = x - x.mean()
    return float(-(x * (y - y.mean())).sum() / (x * x).sum())


# ============================================================================ (a) ODE solver orders

GAUSS_2D = GaussianMixture([[0.5, -0.3]], [[[0.5, 0.2], [0.2, 0.3]]])
ODE_SDES = {"vp": lambda: sd.VPSDE(eps=1e-3), "ve": lambda: sd.VESDE(sigma_min=0.01, sigma_max=50.0)}

ORDER_CASES = [
    # name, factory(steps), step counts, expected order, tolerance band
    pytest.param(lambda n: S.DDIM(steps=n, eta=0.0, denoise=False), (20, 40, 80, 160), 1.0, 0.3, id="ddim_eta0"),
    pytest.param(lambda n: S.ProbabilityFlowODE(method="euler", steps=n, denoise=False), (40, 80, 160, 320), 1.0, 0.3, id="euler"),
    pytest.param(lambda n: S.ProbabilityFlowODE(method="midpoint", steps=n, denoise=False), (20, 40, 80, 160), 2.0, 0.3, id="midpoint"),
    pytest.param(lambda n: S.ProbabilityFlowODE(method="heun2", steps=n, denoise=False), (20, 40, 80, 160), 2.0, 0.3, id="heun2"),
    pytest.param(lambda n: S.ProbabilityFlowODE(method="rk4", steps=n, denoise=False), (10, 20, 40, 80), 4.0, 0.5, id="rk4"),
]


@pytest.mark.parametrize("sde_name", sorted(ODE_SDES))
@pytest.mark.parametrize("make,steps,order,band", ORDER_CASES)
def test_deterministic_solver_order(make, steps, order, band, sde_name):
    sde = ODE_SDES[sde_name]()
    model = GAUSS_2D.score_model(sde)
    x_T = sde.prior_sample((64, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = GAUSS_2D.flow(x_T, sde.T, sde.eps, sde)
    errors = []
    for n in steps:
        out = make(n).sample(model, x_T=x_T)
        assert out.x.dtype == torch.float64
        assert float(out.times[-1]) == pytest.approx(sde.eps)  # no denoise: compared at eps
        errors.append(float((out.x - exact).abs().max()))
    assert all(a > b for a, b in zip(errors, errors[1:])), f"errors not decreasing: {errors}"
    slope = loglog_slope(steps, errors)
    assert abs(slope - order) < band, f"measured order {slope:.2f}, expected {order} (errors {errors} at steps {steps})"
    if order >= 4:
        assert slope > 3.5


# ============================================================================ (b) Euler–Maruyama weak order

MU, S2 = 2.0, 0.36  # 1-D Gaussian data N(MU, S2); the mean bias scales with MU, so a large MU separates it from MC noise


def gaussian_score_model(sde) -> sd.ScoreModel:
    """The exact score of N(MU, S2) data noised by ``sde``: −(x − α μ)/(α² s² + σ²)."""

    def score(x, t):
        t = t.double()
        alpha = sde.alpha(t).reshape(-1, 1).to(x.dtype)
        sigma = sde.sigma(t).reshape(-1, 1).to(x.dtype)
        return -(x - alpha * MU) / (alpha**2 * S2 + sigma**2)

    return sd.ScoreModel.from_score_fn(score, sde)


def _schedule_at(sde, t: float):
    return float(sde.alpha(t)), float(sde.sigma(t))


def exact_marginal(sde, t: float):
    """Mean and variance of p_t for N(MU, S2) data: N(α μ, α² s² + σ²)."""
    alpha, sigma = _schedule_at(sde, t)
    return alpha * MU, alpha**2 * S2 + sigma**2


def em_recursion_moments(sde, grid: str, steps: int):
    """Exact mean and variance of the EM chain started from the exact p_T (the score is linear in x)."""
    mean, var = exact_marginal(sde, sde.T)
    for iv in intervals(sde, make_grid(grid, sde, steps)):
        vt = iv.alpha_t**2 * S2 + iv.sigma_t**2
        c = 1 + (iv.f_t + iv.g2_t / vt) * iv.dt
        d = -iv.g2_t * iv.alpha_t * MU / vt * iv.dt
        mean, var = c * mean + d, c * c * var + iv.g2_t * -iv.dt
    return mean, var


def em_weak_errors(sde, grid, steps_list, paths, seed):
    model = gaussian_score_model(sde)
    m_T, v_T = exact_marginal(sde, sde.T)
    m_eps, v_eps = exact_marginal(sde, sde.eps)
    rows = []
    for k, steps in enumerate(steps_list):
        g = torch.Generator().manual_seed(seed + k)
        x_T = m_T + math.sqrt(v_T) * torch.randn(paths, 1, generator=g, dtype=torch.float64)
        x = S.EulerMaruyama(steps=steps, grid=grid, denoise=False).sample(model, x_T=x_T, generator=g).x
        rec_m, rec_v = em_recursion_moments(sde, grid, steps)
        rows.append(dict(steps=steps, mean=float(x.mean()), var=float(x.var()), rec_mean=rec_m, rec_var=rec_v))
    # MC standard errors of a Gaussian sample mean and variance
    se_mean, se_var = math.sqrt(v_eps / paths), v_eps * math.sqrt(2.0 / (paths - 1))
    return rows, (m_eps, v_eps), (se_mean, se_var)


def _check_weak_order(sde, grid, steps_list, paths, seed):
    rows, (m_eps, v_eps), (se_mean, se_var) = em_weak_errors(sde, grid, steps_list, paths, seed)
    for r in rows:
        # the sampler is exactly the EM recursion: MC moments match its closed-form moments
        assert abs(r["mean"] - r["rec_mean"]) < 5 * se_mean, r
        assert abs(r["var"] - r["rec_var"]) < 5 * se_var, r
        # and the bias is well above the MC noise (otherwise the slope below would measure noise)
        assert abs(r["mean"] - m_eps) > 5 * se_mean and abs(r["var"] - v_eps) > 5 * se_var, r
    mean_slope = loglog_slope(steps_list, [abs(r["mean"] - m_eps) for r in rows])
    var_slope = loglog_slope(steps_list, [abs(r["var"] - v_eps) for r in rows])
    assert 0.7 < mean_slope < 1.3, f"EM weak order (mean) {mean_slope:.2f}: {rows}"
    assert 0.7 < var_slope < 1.3, f"EM weak order (variance) {var_slope:.2f}: {rows}"
    return mean_slope, var_slope


def test_euler_maruyama_weak_order_one():
    _check_weak_order(sd.VPSDE(), "quadratic", (16, 32, 64), paths=400_000, seed=11)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name,grid", [("vp", "uniform"), ("vp", "quadratic"), ("subvp", "uniform")])
def test_euler_maruyama_weak_order_one_many_paths(sde_name, grid):
    sde = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE()}[sde_name]
    _check_weak_order(sde, grid, (16, 32, 64, 128), paths=1_000_000, seed=12)


def test_em_recursion_moments_converge_to_exact_marginal():
    """The closed-form EM moments used above tend to the exact marginal as steps → ∞ (first order)."""
    sde = sd.VPSDE()
    m_eps, v_eps = exact_marginal(sde, sde.eps)
    errs = [abs(em_recursion_moments(sde, "uniform", n)[1] - v_eps) for n in (256, 512, 1024, 2048)]
    assert errs[-1] < 2e-3
    assert loglog_slope((256, 512, 1024, 2048), errs) == pytest.approx(1.0, abs=0.1)


# ============================================================================ (c) DDPM vs reverse diffusion


def _ddpm_and_rd():
    return S.DDPM(), S.ReverseDiffusion(steps=999)  # both walk t_i = (i+1)/1000, i = 999 … 0, then x̂_0


def test_ddpm_and_reverse_diffusion_walk_the_same_grid():
    sde = sd.DiscreteVPSDE.linear()
    ddpm, rd = _ddpm_and_rd()
    assert torch.equal(ddpm.times(sde), rd.times(sde))
    assert torch.allclose(ddpm.times(sde), torch.arange(1000, 0, -1, dtype=torch.float64) / 1000, rtol=0, atol=1e-12)


def test_ddpm_and_reverse_diffusion_agree_on_gmm():
    floor = noise_floor()
    sde = sd.DiscreteVPSDE.linear()
    model = reference_gmm().score_model(sde)
    ddpm, rd = _ddpm_and_rd()
    x_ddpm = ddpm.sample(model, shape=(N_SAMPLES, 2), generator=torch.Generator().manual_seed(21), dtype=torch.float64).x
    x_rd = rd.sample(model, shape=(N_SAMPLES, 2), generator=torch.Generator().manual_seed(22), dtype=torch.float64).x
    stat = mmd_stat(x_ddpm, x_rd)
    assert stat < floor.threshold, f"DDPM vs reverse diffusion: MMD {stat:.3e}. {floor.describe()}"


def test_ddpm_and_reverse_diffusion_agree_on_gaussian_moments():
    """Independent runs, 40 000 1-D paths each: |Δ mean| and |Δ var| within 4.5 MC standard errors.

    Both also match the exact law of the final denoised sample, x̂_0 = E[x_0 | x_eps] with x_eps ~ p_eps:
    N(μ, s² · α²s²/(α²s² + σ²)) at t_eps = 1/1000.
    """
    sde = sd.DiscreteVPSDE.linear()
    model = gaussian_score_model(sde)
    paths = 40_000
    ddpm, rd = _ddpm_and_rd()
    x_ddpm = ddpm.sample(model, shape=(paths, 1), generator=torch.Generator().manual_seed(31), dtype=torch.float64).x
    x_rd = rd.sample(model, shape=(paths, 1), generator=torch.Generator().manual_seed(32), dtype=torch.float64).x
    alpha, sigma = _schedule_at(sde, sde.eps)
    v = S2 * alpha**2 * S2 / (alpha**2 * S2 + sigma**2)
    se_diff_mean = math.sqrt(2 * v / paths)
    se_diff_var = v * math.sqrt(2 * 2 / (paths - 1))
    assert abs(float(x_ddpm.mean() - x_rd.mean())) < 4.5 * se_diff_mean
    assert abs(float(x_ddpm.var() - x_rd.var())) < 4.5 * se_diff_var
    for x in (x_ddpm, x_rd):
        assert abs(float(x.mean()) - MU) < 4.5 * math.sqrt(v / paths)
        assert abs(float(x.var()) - v) < 4.5 * v * math.sqrt(2 / (paths - 1))
