"""The forward SDE family against independent references.

Every check compares the package with something written here from the math alone: closed forms,
central finite differences of the schedule, scipy quadrature of the defining integrals, an
Euler–Maruyama simulation of the forward SDE, diffusers' schedules and scipy's normal density.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

import sde_diffusion as sd

F64 = torch.float64


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


# --------------------------------------------------------------------------------------------
# strategies: random schedules of every family, with the f, g the test knows independently
# --------------------------------------------------------------------------------------------
@st.composite
def vp_params(draw):
    beta_min = draw(st.floats(0.01, 5.0))
    beta_max = beta_min + draw(st.floats(0.01, 30.0))
    return beta_min, beta_max


@st.composite
def ve_params(draw):
    sigma_min = draw(st.floats(1e-3, 1.0))
    sigma_max = sigma_min * draw(st.floats(2.0, 1e4))
    return sigma_min, sigma_max


@st.composite
def smooth_coefficients(draw):
    """A random smooth f(t) (either sign) and a strictly positive g(t), as torch functions."""
    a = draw(st.floats(-3.0, 1.0))
    b = draw(st.floats(-2.0, 2.0))
    w = draw(st.floats(0.5, 6.0))
    c = draw(st.floats(0.05, 4.0))
    d = draw(st.floats(0.0, 3.0))
    w2 = draw(st.floats(0.5, 6.0))

    def f(t):
        return a + b * torch.cos(w * t)

    def g(t):
        return torch.sqrt(c + d * t**2) * (1.2 + torch.sin(w2 * t))

    return f, g


@st.composite
def any_sde(draw):
    kind = draw(st.sampled_from(["vp", "subvp", "ve", "cosine", "discrete", "coefficients"]))
    if kind == "vp":
        return sd.VPSDE(*draw(vp_params()))
    if kind == "subvp":
        return sd.SubVPSDE(*draw(vp_params()))
    if kind == "ve":
        return sd.VESDE(*draw(ve_params()))
    if kind == "cosine":
        return sd.CosineVPSDE(s=draw(st.floats(1e-3, 0.2)))
    if kind == "discrete":
        n = draw(st.integers(10, 1000))
        start = draw(st.floats(1e-5, 1e-3))
        end = draw(st.floats(5e-3, 0.05))
        return sd.DiscreteVPSDE.linear(n=n, beta_start=start, beta_end=end)
    f, g = draw(smooth_coefficients())
    return sd.LinearSDE.from_coefficients(f, g, sigma0=draw(st.sampled_from([0.0, 0.1])))


def _fd_point(sde, u: float, v: float):
    """A time t in (eps, T) and a central-difference step h that keeps t ± h inside (0, T)
    (for DiscreteVPSDE: strictly inside one segment of its piecewise-linear log α)."""
    if isinstance(sde, sd.DiscreteVPSDE):
        n = sde.num_steps
        k = min(int(u * n), n - 1)
        t = (k + 0.1 + 0.8 * v) / n
        return t, 0.05 / n
    t = sde.eps + (sde.T - sde.eps) * (0.001 + 0.998 * u)
    h = min(1e-6, 0.1 * t, 0.1 * (sde.T - t))
    return t, h


# --------------------------------------------------------------------------------------------
# property tests over random schedules
# --------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(sde=any_sde(), u=st.floats(0.0, 1.0), v=st.floats(0.0, 1.0))
def test_f_is_dlogalpha_dt_and_g2_matches_variance_ode(sde, u, v):
    t, h = _fd_point(sde, u, v)
    tt = _t([t - h, t, t + h])
    log_alpha = torch.log(sde.alpha(tt))
    var = sde.sigma(tt) ** 2
    dlog_alpha = float(log_alpha[2] - log_alpha[0]) / (2 * h)
    dvar = float(var[2] - var[0]) / (2 * h)
    f = float(sde.f(_t(t)))
    g2 = float(sde.g(_t(t))) ** 2
    assert float(sde.g2(_t(t))) == pytest.approx(g2, rel=1e-12)
    # d log α / dt = f
    assert dlog_alpha == pytest.approx(f, rel=1e-6, abs=1e-7)
    # dσ²/dt = 2 f σ² + g²
    rhs = 2 * f * float(var[1]) + g2
    assert dvar == pytest.approx(rhs, rel=1e-6, abs=1e-9 * max(1.0, float(var[1])))


@settings(max_examples=25, deadline=None)
@given(sde=any_sde())
def test_log_snr_strictly_decreasing_and_inverted_by_t_of_log_snr(sde):
    ts = torch.linspace(sde.eps, sde.T, 401, dtype=F64)
    lam = sde.log_snr(ts)
    assert torch.isfinite(lam).all()
    assert (lam[1:] < lam[:-1]).all()
    back = sde.t_of_log_snr(lam)
    torch.testing.assert_close(back, ts, rtol=0, atol=1e-8)


@pytest.mark.parametrize(
    "sde",
    [
        sd.VPSDE(),
        sd.SubVPSDE(),
        sd.VESDE(),
        sd.CosineVPSDE(),
        sd.DiscreteVPSDE.linear(),
        sd.DiscreteVPSDE.cosine(),
        sd.VPSDE().discretize(100),
        sd.LinearSDE.from_coefficients(lambda t: -0.5 * (0.1 + 19.9 * t), lambda t: torch.sqrt(0.1 + 19.9 * t)),
    ],
    ids=lambda s: type(s).__name__,
)
def test_t_of_log_snr_round_trip_every_class(sde):
    ts = torch.cat([torch.linspace(sde.eps, sde.T, 257, dtype=F64), torch.rand(64, dtype=F64, generator=torch.Generator().manual_seed(0)) * (sde.T - sde.eps) + sde.eps])
    lam = sde.log_snr(ts)
    torch.testing.assert_close(sde.t_of_log_snr(lam), ts, rtol=0, atol=1e-9)
    # a scalar works too and keeps its type's float64-ness
    t0 = 0.5 * (sde.eps + sde.T)
    assert float(sde.t_of_log_snr(float(sde.log_snr(t0)))) == pytest.approx(t0, abs=1e-9)


# --------------------------------------------------------------------------------------------
# closed forms written independently here
# --------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(params=vp_params())
def test_vp_and_subvp_closed_forms(params):
    beta_min, beta_max = params
    ts = np.linspace(1e-3, 1.0, 97)
    alpha = np.exp(-0.25 * ts**2 * (beta_max - beta_min) - 0.5 * ts * beta_min)
    vp, subvp = sd.VPSDE(beta_min, beta_max), sd.SubVPSDE(beta_min, beta_max)
    tt = torch.from_numpy(ts)
    np.testing.assert_allclose(vp.alpha(tt).numpy(), alpha, rtol=1e-12)
    np.testing.assert_allclose(vp.sigma(tt).numpy() ** 2, 1 - alpha**2, rtol=1e-10)
    np.testing.assert_allclose(subvp.alpha(tt).numpy(), alpha, rtol=1e-12)
    np.testing.assert_allclose(subvp.sigma(tt).numpy(), 1 - alpha**2, rtol=1e-10)
    beta = beta_min + ts * (beta_max - beta_min)
    np.testing.assert_allclose(vp.f(tt).numpy(), -0.5 * beta, rtol=1e-12)
    np.testing.assert_allclose(vp.g(tt).numpy(), np.sqrt(beta), rtol=1e-12)
    int_beta = beta_min * ts + 0.5 * (beta_max - beta_min) * ts**2
    np.testing.assert_allclose(subvp.g(tt).numpy() ** 2, beta * (1 - np.exp(-2 * int_beta)), rtol=1e-10)
    # sub-VP variance never exceeds the VP one
    assert (subvp.sigma(tt) <= vp.sigma(tt) + 1e-15).all()


@settings(max_examples=25, deadline=None)
@given(params=ve_params())
def test_ve_closed_form(params):
    sigma_min, sigma_max = params
    ve = sd.VESDE(sigma_min, sigma_max)
    ts = np.linspace(0.0, 1.0, 101)
    tt = torch.from_numpy(ts)
    np.testing.assert_allclose(ve.sigma(tt).numpy(), sigma_min * (sigma_max / sigma_min) ** ts, rtol=1e-12)
    np.testing.assert_array_equal(ve.alpha(tt).numpy(), np.ones_like(ts))
    np.testing.assert_array_equal(ve.f(tt).numpy(), np.zeros_like(ts))
    expected_g = sigma_min * (sigma_max / sigma_min) ** ts * math.sqrt(2 * math.log(sigma_max / sigma_min))
    np.testing.assert_allclose(ve.g(tt).numpy(), expected_g, rtol=1e-12)
    assert ve.prior_std == sigma_max


@settings(max_examples=25, deadline=None)
@given(s=st.floats(1e-3, 0.2))
def test_cosine_closed_form(s):
    cos = sd.CosineVPSDE(s=s)
    ts = np.linspace(0.0, cos.T, 101)
    abar = np.cos((ts + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
    tt = torch.from_numpy(ts)
    np.testing.assert_allclose(cos.alpha(tt).numpy() ** 2, abar, rtol=1e-11)
    np.testing.assert_allclose(cos.sigma(tt).numpy()[1:] ** 2, 1 - abar[1:], rtol=1e-9)
    np.testing.assert_allclose(cos.f(tt).numpy(), -np.pi / (2 * (1 + s)) * np.tan((ts + s) / (1 + s) * np.pi / 2), rtol=1e-11)
    # t = 0 is clean data: α = 1, σ = 0 exactly (not NaN from log α(0) rounding to +1e-20)
    assert float(cos.alpha(0.0)) == 1.0
    assert float(cos.sigma(0.0)) == 0.0


@settings(max_examples=25, deadline=None)
@given(sde=any_sde())
def test_schedule_finite_at_both_ends(sde):
    ends = _t([0.0, sde.T])
    for fn in (sde.alpha, sde.sigma, sde.f, sde.g):
        assert torch.isfinite(fn(ends)).all(), fn.__name__
    assert float(sde.alpha(0.0)) == pytest.approx(1.0, abs=1e-12)
    sigma0 = sde.sigma_min if isinstance(sde, sd.VESDE) else getattr(sde, "sigma0", 0.0)
    assert float(sde.sigma(0.0)) == pytest.approx(sigma0, rel=1e-9, abs=1e-15)


def test_prior_std_matches_sigma_T_up_to_convention():
    assert sd.VPSDE().prior_std == 1.0
    assert sd.VESDE(0.01, 50.0).prior_std == 50.0
    assert float(sd.VPSDE().sigma(1.0)) == pytest.approx(1.0, abs=1e-4)
    assert float(sd.CosineVPSDE().sigma(sd.CosineVPSDE().T)) == pytest.approx(1.0, abs=1e-4)


# --------------------------------------------------------------------------------------------
# LinearSDE.from_coefficients
# --------------------------------------------------------------------------------------------
def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs()).max())


@pytest.mark.parametrize("beta_min,beta_max", [(0.1, 20.0), (0.5, 5.0)])
def test_from_coefficients_reproduces_vp_and_subvp(beta_min, beta_max):
    def beta(t):
        return beta_min + t * (beta_max - beta_min)

    def int_beta(t):
        return beta_min * t + 0.5 * (beta_max - beta_min) * t**2

    ts = torch.linspace(1e-3, 1.0, 500, dtype=F64)
    vp = sd.LinearSDE.from_coefficients(lambda t: -0.5 * beta(t), lambda t: torch.sqrt(beta(t)))
    ref = sd.VPSDE(beta_min, beta_max)
    assert _rel_err(vp.alpha(ts), ref.alpha(ts)) <= 1e-5
    assert _rel_err(vp.sigma(ts), ref.sigma(ts)) <= 1e-5
    sub = sd.LinearSDE.from_coefficients(
        lambda t: -0.5 * beta(t), lambda t: torch.sqrt(beta(t) * -torch.expm1(-2 * int_beta(t)))
    )
    ref = sd.SubVPSDE(beta_min, beta_max)
    assert _rel_err(sub.alpha(ts), ref.alpha(ts)) <= 1e-5
    assert _rel_err(sub.sigma(ts), ref.sigma(ts)) <= 1e-5


@pytest.mark.parametrize("sigma_min,sigma_max", [(0.01, 50.0), (0.1, 10.0)])
def test_from_coefficients_reproduces_ve(sigma_min, sigma_max):
    k = math.log(sigma_max / sigma_min)
    ve = sd.LinearSDE.from_coefficients(
        lambda t: torch.zeros_like(t), lambda t: sigma_min * torch.exp(k * t) * math.sqrt(2 * k), eps=1e-5, sigma0=sigma_min
    )
    ref = sd.VESDE(sigma_min, sigma_max)
    ts = torch.linspace(1e-5, 1.0, 500, dtype=F64)
    assert _rel_err(ve.alpha(ts), ref.alpha(ts)) <= 1e-5
    assert _rel_err(ve.sigma(ts), ref.sigma(ts)) <= 1e-5
    assert ve.prior_std == pytest.approx(sigma_max, rel=1e-6)


def test_from_coefficients_matches_quadrature_of_defining_integrals():
    """f, g without closed-form marginals, T ≠ 1 and σ(0) > 0: α = exp∫f, σ² = α²(σ0² + ∫g²/α²)."""

    def f_np(s):
        return -0.3 - 1.5 * s * np.cos(3 * s) ** 2

    def g_np(s):
        return np.sqrt(0.2 + s**3) * (1.0 + 0.5 * np.sin(5 * s))

    sigma0, T = 0.05, 1.5
    sde = sd.LinearSDE.from_coefficients(
        lambda t: -0.3 - 1.5 * t * torch.cos(3 * t) ** 2,
        lambda t: torch.sqrt(0.2 + t**3) * (1.0 + 0.5 * torch.sin(5 * t)),
        T=T,
        sigma0=sigma0,
    )

    def log_alpha(t):
        return integrate.quad(f_np, 0.0, t, epsabs=1e-14, epsrel=1e-13)[0]

    for t in [1e-3, 0.1, 0.37, 0.8, 1.234, 1.5]:
        la = log_alpha(t)
        inner = integrate.quad(lambda s: g_np(s) ** 2 * math.exp(-2 * log_alpha(s)), 0.0, t, epsabs=1e-14, epsrel=1e-12)[0]
        sigma = math.exp(la) * math.sqrt(sigma0**2 + inner)
        assert float(sde.alpha(t)) == pytest.approx(math.exp(la), rel=1e-7)
        assert float(sde.sigma(t)) == pytest.approx(sigma, rel=1e-7)
        assert float(sde.f(t)) == pytest.approx(f_np(t), rel=1e-12)
        assert float(sde.g(t)) == pytest.approx(g_np(t), rel=1e-12)


# --------------------------------------------------------------------------------------------
# Euler–Maruyama simulation of the forward SDE
# --------------------------------------------------------------------------------------------
def _forward_em(f, g2, x_init: torch.Tensor, T_end: float, steps: int, checkpoints, generator):
    """dx = f x dt + g dW with Euler–Maruyama on a uniform grid 0 … T_end; states at checkpoints."""
    dt = T_end / steps
    x = x_init.clone()
    out = {}
    want = {int(round(c / dt)): c for c in checkpoints}
    for k in range(steps):
        t = k * dt
        x = x + f(t) * x * dt + math.sqrt(g2(t) * dt) * torch.randn(x.shape, generator=generator, dtype=F64)
        if k + 1 in want:
            out[want[k + 1]] = x.clone()
    return out


def _em_moment_recursion(f, g2, m0: float, v0: float, T_end: float, steps: int, checkpoints):
    """Exact mean and variance of the Euler–Maruyama chain (deterministic recursion)."""
    dt = T_end / steps
    m, v, out = m0, v0, {}
    want = {int(round(c / dt)): c for c in checkpoints}
    for k in range(steps):
        t = k * dt
        m = (1 + f(t) * dt) * m
        v = (1 + f(t) * dt) ** 2 * v + g2(t) * dt
        if k + 1 in want:
            out[want[k + 1]] = (m, v)
    return out


def _check_forward_simulation(sde, f, g2, x0: float, checkpoints, n_paths: int, steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    T_end = max(checkpoints)
    a0, s0 = float(sde.alpha(0.0)), float(sde.sigma(0.0))
    x_init = a0 * x0 + s0 * torch.randn(n_paths, generator=gen, dtype=F64)  # x_0's law under the SDE's convention
    sims = _forward_em(f, g2, x_init, T_end, steps, checkpoints, gen)
    # O(dt) bias of EM, estimated by Richardson extrapolation of the exact EM moments (dt vs dt/2)
    coarse = _em_moment_recursion(f, g2, a0 * x0, s0**2, T_end, steps, checkpoints)
    fine = _em_moment_recursion(f, g2, a0 * x0, s0**2, T_end, 2 * steps, checkpoints)
    for c in checkpoints:
        x = sims[c]
        mean, std = sde.marginal(torch.full((1,), x0, dtype=F64), _t(c))
        mean, var = float(mean), float(std) ** 2
        n = x.numel()
        se_mean = math.sqrt(var / n)
        se_var = var * math.sqrt(2.0 / (n - 1))
        bias_mean = 2 * abs(2 * (coarse[c][0] - fine[c][0])) + 1e-12
        bias_var = 2 * abs(2 * (coarse[c][1] - fine[c][1])) + 1e-12
        assert abs(float(x.mean()) - mean) <= 5 * se_mean + bias_mean, (c, float(x.mean()), mean)
        assert abs(float(x.var()) - var) <= 5 * se_var + bias_var, (c, float(x.var()), var)


def _vp_coeffs(beta_min=0.1, beta_max=20.0):
    return (lambda t: -0.5 * (beta_min + t * (beta_max - beta_min)), lambda t: beta_min + t * (beta_max - beta_min))


def _ve_coeffs(sigma_min=0.01, sigma_max=50.0):
    k = math.log(sigma_max / sigma_min)
    return (lambda t: 0.0, lambda t: (sigma_min * math.exp(k * t)) ** 2 * 2 * k)


def _cosine_coeffs(s=0.008):
    c = math.pi / (2 * (1 + s))

    def f(t):
        return -c * math.tan((t + s) / (1 + s) * math.pi / 2)

    return f, lambda t: -2 * f(t)


def test_forward_em_matches_marginal_vp():
    f, g2 = _vp_coeffs()
    _check_forward_simulation(sd.VPSDE(), f, g2, x0=1.5, checkpoints=[0.1, 0.4, 1.0], n_paths=20_000, steps=2000)


def test_forward_em_matches_marginal_ve():
    f, g2 = _ve_coeffs()
    _check_forward_simulation(sd.VESDE(0.01, 50.0), f, g2, x0=-2.0, checkpoints=[0.2, 0.6, 1.0], n_paths=20_000, steps=2000)


def test_forward_em_matches_marginal_cosine():
    f, g2 = _cosine_coeffs()
    _check_forward_simulation(sd.CosineVPSDE(), f, g2, x0=0.7, checkpoints=[0.25, 0.5, 0.9], n_paths=20_000, steps=2000)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["vp", "ve", "cosine", "subvp"])
def test_forward_em_matches_marginal_heavy(which):
    if which == "vp":
        sde, (f, g2) = sd.VPSDE(), _vp_coeffs()
    elif which == "ve":
        sde, (f, g2) = sd.VESDE(0.01, 50.0), _ve_coeffs()
    elif which == "cosine":
        sde, (f, g2) = sd.CosineVPSDE(), _cosine_coeffs()
    else:
        f = _vp_coeffs()[0]

        def g2(t):
            beta = 0.1 + 19.9 * t
            return beta * (1 - math.exp(-2 * (0.1 * t + 0.5 * 19.9 * t**2)))

        sde = sd.SubVPSDE()
    _check_forward_simulation(sde, f, g2, x0=1.0, checkpoints=[0.05, 0.3, 0.6, 0.9], n_paths=100_000, steps=2000, seed=1)


# --------------------------------------------------------------------------------------------
# DDPM: discretisation and DiscreteVPSDE
# --------------------------------------------------------------------------------------------
def test_vp_discretize_is_ddpm_linspace():
    ddpm = sd.VPSDE().discretize(1000)
    assert isinstance(ddpm, sd.DiscreteVPSDE)
    assert ddpm.betas.dtype == F64
    torch.testing.assert_close(ddpm.betas, torch.linspace(1e-4, 0.02, 1000, dtype=F64), rtol=0, atol=1e-12)
    # and the general formula β_i = β_min/N + i(β_max − β_min)/(N(N−1))
    n = 37
    i = np.arange(n)
    expected = 0.3 / n + i * (7.0 - 0.3) / (n * (n - 1))
    np.testing.assert_allclose(sd.VPSDE(0.3, 7.0).discretize(n).betas.numpy(), expected, rtol=1e-13)


def test_vp_discretization_converges_to_continuous_alpha():
    # ᾱ_i of the N-step chain → α(t_i)² of the VP SDE as N grows
    vp = sd.VPSDE()
    errs = []
    for n in (250, 1000, 4000):
        abar = np.cumprod(1 - vp.discretize(n).betas.numpy())
        ti = (np.arange(n) + 1) / n
        errs.append(np.abs(abar - vp.alpha(torch.from_numpy(ti)).numpy() ** 2).max())
    assert errs[-1] < 1e-3 and errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("sde", [sd.DiscreteVPSDE.linear(), sd.DiscreteVPSDE.cosine(), sd.DiscreteVPSDE.linear(n=17, beta_start=0.01, beta_end=0.3)], ids=["linear", "cosine", "short"])
def test_discrete_vpsde_knots_and_indices(sde):
    betas = sde.betas.numpy()
    n = len(betas)
    abar = np.cumprod(1.0 - betas)
    i = torch.arange(n)
    ti = sde.step_time(i)
    np.testing.assert_allclose(ti.numpy(), (np.arange(n) + 1) / n, rtol=0, atol=1e-15)
    np.testing.assert_allclose(sde.alpha(ti).numpy() ** 2, abar, rtol=1e-12)
    np.testing.assert_allclose(sde.sigma(ti).numpy() ** 2, 1 - abar, rtol=1e-10)
    assert torch.equal(sde.step_index(ti), i)
    for j in [0, n // 2, n - 1]:
        assert int(sde.step_index(float(sde.step_time(j)))) == j
    assert float(sde.alpha(0.0)) == 1.0
    # between knots, log α is the linear interpolation of the knot values
    k = n // 3
    u = 0.3
    expected = (1 - u) * 0.5 * math.log(abar[k - 1]) + u * 0.5 * math.log(abar[k])
    assert math.log(float(sde.alpha((k + u) / n))) == pytest.approx(expected, rel=1e-12)


def test_discrete_cosine_matches_diffusers():
    from diffusers import DDPMScheduler

    ours = sd.DiscreteVPSDE.cosine(1000).betas
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").betas.double()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    lin = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    torch.testing.assert_close(sd.DiscreteVPSDE.linear().betas, lin.betas.double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sd.DiscreteVPSDE.linear().alphas_cumprod, lin.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# marginal, perturb, prior
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.CosineVPSDE(), sd.SubVPSDE()], ids=lambda s: type(s).__name__)
def test_perturb_per_sample_t_over_images(sde):
    gen = torch.Generator().manual_seed(3)
    B = 5
    x0 = torch.randn(B, 3, 4, 4, generator=gen, dtype=F64)
    noise = torch.randn(B, 3, 4, 4, generator=gen, dtype=F64)
    t = sde.eps + (sde.T - sde.eps) * torch.rand(B, generator=gen, dtype=F64)
    xt = sde.perturb(x0, t, noise)
    for b in range(B):
        tb = float(t[b])
        if isinstance(sde, sd.VESDE):
            a, s = 1.0, sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** tb
        elif isinstance(sde, sd.CosineVPSDE):
            a = math.cos((tb + sde.s) / (1 + sde.s) * math.pi / 2) / math.cos(sde.s / (1 + sde.s) * math.pi / 2)
            s = math.sqrt(1 - a * a)
        else:
            a = math.exp(-0.25 * tb**2 * (sde.beta_max - sde.beta_min) - 0.5 * tb * sde.beta_min)
            s = 1 - a * a if isinstance(sde, sd.SubVPSDE) else math.sqrt(1 - a * a)
        torch.testing.assert_close(xt[b], a * x0[b] + s * noise[b], rtol=1e-12, atol=1e-12)
    mean, std = sde.marginal(x0, t)
    assert std.shape == (B, 1, 1, 1)
    torch.testing.assert_close(mean + std * noise, xt, rtol=0, atol=0)
    # a scalar t broadcasts to every sample
    xs = sde.perturb(x0, float(t[0]), noise)
    torch.testing.assert_close(xs[0], xt[0], rtol=1e-14, atol=1e-14)
    # float32 in, float32 out
    assert sde.perturb(x0.float(), t.float(), noise.float()).dtype == torch.float32


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(0.01, 50.0)], ids=["vp", "ve"])
def test_prior_sample_uses_generator_randn_times_prior_std(sde):
    shape = (4, 2, 3, 3)
    x = sde.prior_sample(shape, generator=torch.Generator().manual_seed(11))
    ref = torch.randn(shape, generator=torch.Generator().manual_seed(11)) * sde.prior_std
    assert torch.equal(x, ref)
    again = sde.prior_sample(shape, generator=torch.Generator().manual_seed(11))
    assert torch.equal(x, again)
    other = sde.prior_sample(shape, generator=torch.Generator().manual_seed(12))
    assert not torch.equal(x, other)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(0.01, 50.0)], ids=["vp", "ve"])
def test_prior_logp_is_sum_of_normal_logpdfs(sde):
    z = sde.prior_sample((6, 3, 2, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    expected = stats.norm.logpdf(z.numpy(), loc=0.0, scale=sde.prior_std).reshape(6, -1).sum(1)
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), expected, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# bad input names the argument
# --------------------------------------------------------------------------------------------
def test_bad_betas():
    with pytest.raises(ValueError, match="betas.*non-decreasing"):
        sd.DiscreteVPSDE([0.02, 0.01, 0.03])
    with pytest.raises(ValueError, match=r"betas.*\(0, 1\)"):
        sd.DiscreteVPSDE([0.1, 1.0])
    with pytest.raises(ValueError, match=r"betas.*\(0, 1\)"):
        sd.DiscreteVPSDE([0.0, 0.1])
    with pytest.raises(ValueError, match="betas.*NaN"):
        sd.DiscreteVPSDE([0.1, float("nan")])


def test_bad_schedule_parameters():
    with pytest.raises(ValueError, match="sigma_min"):
        sd.VESDE(sigma_min=50.0, sigma_max=0.01)
    with pytest.raises(ValueError, match="sigma_min"):
        sd.VESDE(sigma_min=1.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="beta_max"):
        sd.VPSDE(beta_min=20.0, beta_max=0.1)
    with pytest.raises(ValueError, match="beta_max"):
        sd.SubVPSDE(beta_min=2.0, beta_max=1.0)
    with pytest.raises(ValueError, match="beta_min"):
        sd.VPSDE(beta_min=float("nan"))
    with pytest.raises(ValueError, match="s"):
        sd.CosineVPSDE(s=-0.1)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.CosineVPSDE(), sd.DiscreteVPSDE.linear()], ids=lambda s: type(s).__name__)
def test_bad_time_and_shapes(sde):
    x0 = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T"):
        sde.marginal(x0, torch.full((4,), sde.T + 0.1))
    with pytest.raises(ValueError, match=r"t must lie in \[0, T"):
        sde.sigma(-0.01)
    with pytest.raises(ValueError, match="t contains NaN"):
        sde.marginal(x0, torch.tensor([0.1, float("nan"), 0.2, 0.3]))
    with pytest.raises(ValueError, match="t has shape"):
        sde.marginal(x0, torch.full((5,), 0.5))
    with pytest.raises(ValueError, match="noise"):
        sde.perturb(x0, 0.5, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        sde.marginal(torch.tensor([[0.0, float("nan"), 0.0]] * 4), 0.5)
