"""The lecture notes' DDPM derivations (seeds 000 and 001), checked numerically, and the sampler
step that implements them.

Notation as in the notes (1-based t): β_t, α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s, ᾱ_0 = 1;
q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t), q(x_{t−1} | x_0) = N(√ᾱ_{t−1} x_0, 1 − ᾱ_{t−1}), and
the posterior q(x_{t−1} | x_t, x_0) = N(μ̃, β̃) with
    μ̃ = (√ᾱ_{t−1} β_t x_0 + √α_t (1 − ᾱ_{t−1}) x_t)/(1 − ᾱ_t),   β̃ = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sde_diffusion as sd
from sde_diffusion.samplers.base import SamplingContext, intervals
from sde_diffusion.samplers.ddpm import ancestral_step

F64 = torch.float64
N = 1000
BETAS = np.linspace(1e-4, 0.02, N)  # DDPM's schedule, β_1 … β_N (index t − 1)
ABAR = np.cumprod(1.0 - BETAS)


def schedule(t: int):
    """(β_t, α_t, ᾱ_t, ᾱ_{t−1}) for the 1-based step t."""
    beta = BETAS[t - 1]
    abar_prev = ABAR[t - 2] if t >= 2 else 1.0
    return beta, 1.0 - beta, ABAR[t - 1], abar_prev


def posterior_closed_form(t: int, x0, xt):
    beta, alpha, abar, abar_prev = schedule(t)
    mu = (math.sqrt(abar_prev) * beta * x0 + math.sqrt(alpha) * (1 - abar_prev) * xt) / (1 - abar)
    var = beta * (1 - abar_prev) / (1 - abar)
    return mu, var


def _log_normal(x, mean, var):
    return -0.5 * (x - mean) ** 2 / var - 0.5 * np.log(2 * np.pi * var)


# --------------------------------------------------------------------------------------------
# the posterior is the Bayes product of the two Gaussians (numerical integration on a grid)
# --------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(t=st.integers(2, N), x0=st.floats(-3.0, 3.0), z=st.floats(-3.0, 3.0))
def test_posterior_is_bayes_product_of_forward_gaussians(t, x0, z):
    beta, alpha, abar, abar_prev = schedule(t)
    xt = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * z  # a plausible x_t for this x_0
    # prior over x_{t-1}: q(x_{t-1}|x_0); likelihood: q(x_t|x_{t-1}) as a function of x_{t-1}
    m_p, s_p = math.sqrt(abar_prev) * x0, math.sqrt(1 - abar_prev)
    m_l, s_l = xt / math.sqrt(alpha), math.sqrt(beta / alpha)
    width = 12 * max(s_p, s_l)
    grid = np.linspace(min(m_p, m_l) - width, max(m_p, m_l) + width, 400_001)
    log_dens = _log_normal(xt, math.sqrt(alpha) * grid, beta) + _log_normal(grid, m_p, s_p**2)
    dens = np.exp(log_dens - log_dens.max())
    dens /= np.trapezoid(dens, grid)
    mean = np.trapezoid(grid * dens, grid)
    var = np.trapezoid((grid - mean) ** 2 * dens, grid)

    mu, beta_tilde = posterior_closed_form(t, x0, xt)
    assert mean == pytest.approx(mu, abs=1e-9 * max(1.0, abs(mu)))
    assert var == pytest.approx(beta_tilde, rel=1e-7)
    # fixed_small variance β̃ never exceeds β (fixed_large)
    assert beta_tilde <= beta


def test_posterior_at_first_step_is_the_data_point():
    # t = 1: ᾱ_0 = 1, so q(x_0 | x_1, x_0) is a point mass at x_0
    mu, var = posterior_closed_form(1, 0.37, -1.2)
    assert mu == pytest.approx(0.37, rel=1e-12) and var == 0.0


# --------------------------------------------------------------------------------------------
# L_simple's ε-parametrisation
# --------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(t=st.integers(1, N), xt=st.floats(-5.0, 5.0), eps=st.floats(-4.0, 4.0))
def test_eps_parametrised_mean_equals_posterior_mean_with_x0_hat(t, xt, eps):
    beta, alpha, abar, _ = schedule(t)
    eps_mean = (xt - beta / math.sqrt(1 - abar) * eps) / math.sqrt(alpha)
    x0_hat = (xt - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    mu, _ = posterior_closed_form(t, x0_hat, xt)
    assert eps_mean == pytest.approx(mu, rel=1e-9, abs=1e-9)


# --------------------------------------------------------------------------------------------
# the sampler's ancestral step is that mean and variance
# --------------------------------------------------------------------------------------------
def _fixed_eps_model(sde, eps: torch.Tensor):
    def net(x, t):
        assert x.shape == eps.shape
        return eps

    return sd.ScoreModel(net, sde, prediction="eps")


def _interval(sde, i: int):
    """The DDPM step i (0-based) as an Interval: from t_i = (i+1)/N down to t_{i−1} = i/N."""
    return intervals(sde, torch.tensor([(i + 1) / sde.num_steps, i / sde.num_steps], dtype=F64))[0]


@pytest.mark.parametrize("i", [1, 7, 250, 500, 999])
def test_ancestral_step_mean_and_noise(i):
    sde = sd.DiscreteVPSDE.linear()
    t = i + 1  # 1-based step of the notes
    beta, alpha, abar, abar_prev = schedule(t)
    iv = _interval(sde, i)
    assert iv.alpha_ts**2 == pytest.approx(alpha, rel=1e-12)
    assert iv.var_ts == pytest.approx(beta, rel=1e-9)

    gen = torch.Generator().manual_seed(100 + i)
    x = torch.randn(8, 3, generator=gen, dtype=F64)
    eps = torch.randn(8, 3, generator=gen, dtype=F64)
    model = _fixed_eps_model(sde, eps)

    ctx = SamplingContext(model, None, torch.Generator().manual_seed(i))
    out = ancestral_step(ctx, x, iv)
    assert ctx.nfe == 1
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=F64)

    mean = (x - beta / math.sqrt(1 - abar) * eps) / math.sqrt(alpha)
    beta_tilde = beta * (1 - abar_prev) / (1 - abar)
    torch.testing.assert_close(out, mean + math.sqrt(beta_tilde) * z, rtol=1e-10, atol=1e-10)
    # the mean is μ̃ with x̂_0 from ε plugged in
    x0_hat = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    mu, _ = posterior_closed_form(t, x0_hat, x)
    torch.testing.assert_close(out - math.sqrt(beta_tilde) * z, mu, rtol=1e-10, atol=1e-10)
    # two generators: the difference isolates √β̃ (z1 − z2)
    out2 = ancestral_step(SamplingContext(model, None, torch.Generator().manual_seed(i + 5000)), x, iv)
    z2 = torch.randn(x.shape, generator=torch.Generator().manual_seed(i + 5000), dtype=F64)
    ratio = (out - out2) / (z - z2)
    torch.testing.assert_close(ratio, torch.full_like(ratio, math.sqrt(beta_tilde)), rtol=1e-8, atol=0)


def test_ancestral_step_variance_monte_carlo():
    """Empirical variance of many one-step draws from one x_t equals β̃ (5 standard errors)."""
    sde = sd.DiscreteVPSDE.linear()
    i = 300
    beta, alpha, abar, abar_prev = schedule(i + 1)
    n = 200_000
    x = torch.full((n, 1), 0.4, dtype=F64)
    eps = torch.full((n, 1), -0.8, dtype=F64)
    out = ancestral_step(SamplingContext(_fixed_eps_model(sde, eps), None, torch.Generator().manual_seed(0)), x, _interval(sde, i))
    beta_tilde = beta * (1 - abar_prev) / (1 - abar)
    mean = (0.4 + beta / math.sqrt(1 - abar) * 0.8) / math.sqrt(alpha)
    assert abs(float(out.mean()) - mean) <= 5 * math.sqrt(beta_tilde / n)
    assert abs(float(out.var()) - beta_tilde) <= 5 * beta_tilde * math.sqrt(2 / (n - 1))


def test_ancestral_last_step_is_the_denoise_and_draws_no_noise():
    sde = sd.DiscreteVPSDE.linear()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 2, generator=gen, dtype=F64)
    eps = torch.randn(4, 2, generator=gen, dtype=F64)
    ctx_gen = torch.Generator().manual_seed(9)
    state = ctx_gen.get_state().clone()
    out = ancestral_step(SamplingContext(_fixed_eps_model(sde, eps), None, ctx_gen), x, _interval(sde, 0))
    _, _, abar, _ = schedule(1)
    torch.testing.assert_close(out, (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar), rtol=1e-10, atol=1e-10)
    assert torch.equal(ctx_gen.get_state(), state)


@pytest.mark.parametrize("i", [0, 1, 500, 999])
def test_ancestral_step_matches_diffusers_ddpm_scheduler(i):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=N, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          variance_type="fixed_small", clip_sample=False, prediction_type="epsilon")
    sched.set_timesteps(N)
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    eps = torch.randn(2, 3, 4, 4, generator=gen)
    sde = sd.DiscreteVPSDE.linear()
    ours = ancestral_step(SamplingContext(_fixed_eps_model(sde, eps), None, torch.Generator().manual_seed(i)), x, _interval(sde, i))
    theirs = sched.step(eps, i, x, generator=torch.Generator().manual_seed(i)).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-5)
