"""The discrete (DDPM) and continuous-time ELBOs against closed forms, Monte Carlo and the data entropy.

Reference: for Gaussian data N(μ, diag v) and the exact score, x̂_0(x_t) = E[x_0 | x_t] and the minimum mean
squared error is MMSE_t = Σ_d v_d/(1 + v_d SNR_t) with SNR = α²/σ², so (Kingma et al. 2021, eq. 13, 17)

    E L_{t−1} = ½ (SNR_{t−1} − SNR_t) MMSE_t,        ½ ∫ g² E‖s − ∇log p_{0t}‖² dt = ½ Σ_d log((1 + v_d S_hi)/(1 + v_d S_lo)),
    E L_T = ½ Σ_d [σ_N² + α_N² (v_d + μ_d²) − 1 − log σ_N²],   E L_0 = ½ Σ_d log(2π v_1) + MMSE_1/(2 v_1),  v_1 = 1/SNR_1.
"""
import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion import elbo
from sde_diffusion.data.gmm import GaussianMixture
from sde_diffusion.elbo import continuous_elbo, discrete_elbo, gaussian_kl, posterior_mean_var, prior_kl, transition_kl
from sde_diffusion.sde import VPSDE

F64 = torch.float64
Z = 4.0  # z-score bound of every Monte-Carlo comparison (two-sided p ≈ 6e-5 per check)


def discretised_vp(n):
    """DDPM schedule with N steps of the same VP SDE (β(t) = 0.1 + 19.9 t): ᾱ at t = i/N is α(i/N)²."""
    log_alpha = VPSDE()._log_alpha(torch.linspace(0, 1, n + 1, dtype=F64))
    return sd.DiscreteVPSDE(1 - torch.exp(2 * (log_alpha[1:] - log_alpha[:-1])))


def snr(sde, t):
    return float(torch.exp(2 * sde._log_snr(torch.tensor(float(t), dtype=F64))))


MEAN, VAR = [0.5, -0.3], [0.09, 0.5]


def gaussian(d):
    return GaussianMixture([MEAN[:d]], [VAR[:d]]), torch.tensor(VAR[:d], dtype=F64), torch.tensor(MEAN[:d], dtype=F64)


def mmse(v, s):
    return float((v / (1 + v * s)).sum())


def expected_discrete(sde, v, mu):
    """Closed-form E_{x_0, noise}[−ELBO] of the exact-score model (module docstring)."""
    n = sde.num_steps
    snrs = [math.inf] + [snr(sde, t / n) for t in range(1, n + 1)]
    a2, s2 = float(sde.alphas_cumprod[-1]), 1 - float(sde.alphas_cumprod[-1])
    prior = 0.5 * float((s2 + a2 * (v + mu**2) - 1 - math.log(s2)).sum())
    v1 = 1 / snrs[1]
    recon = 0.5 * len(v) * math.log(2 * math.pi * v1) + mmse(v, snrs[1]) / (2 * v1)
    diffusion = sum(0.5 * (snrs[t - 1] - snrs[t]) * mmse(v, snrs[t]) for t in range(2, n + 1))
    return prior, recon, diffusion


def expected_continuous(sde, v, mu):
    s_eps, s_T = snr(sde, sde.eps), snr(sde, sde.T)
    a2 = s_T / (1 + s_T)
    prior = 0.5 * float(((1 - a2) + a2 * (v + mu**2) - 1 - math.log(1 - a2)).sum())
    v_eps = 1 / s_eps
    recon = 0.5 * len(v) * math.log(2 * math.pi * v_eps) + mmse(v, s_eps) / (2 * v_eps)
    diffusion = 0.5 * float(torch.log((1 + v * s_eps) / (1 + v * s_T)).sum())
    return prior, recon, diffusion


def entropy(v):
    return 0.5 * float(torch.log(2 * math.pi * math.e * v).sum())


def z_ok(samples, expected):
    se = float(samples.std()) / math.sqrt(samples.numel())
    return abs(float(samples.mean()) - expected) <= Z * se + 1e-9, float(samples.mean()), se


# ----- every KL term against Monte Carlo -----
def mc_kl(mean_q, var_q, mean_p, var_p, n, g):
    """Per-draw log q(y) − log p(y), y ~ q, summed over dims: n draws for each row, shape (n, B)."""
    y = mean_q + var_q**0.5 * torch.randn((n, *mean_q.shape), generator=g, dtype=F64)
    q = torch.distributions.Normal(mean_q, var_q**0.5)
    p = torch.distributions.Normal(mean_p, var_p**0.5)
    return (q.log_prob(y) - p.log_prob(y)).reshape(n, mean_q.shape[0], -1).sum(-1)


def test_prior_and_transition_kls_match_monte_carlo():
    g = torch.Generator().manual_seed(1)
    gm, _, _ = gaussian(2)
    sde = sd.DiscreteVPSDE.linear(20)
    # a deliberately wrong score (exact one ×0.7) so model and posterior means differ visibly
    model = sd.ScoreModel.from_score_fn(lambda x, t: 0.7 * gm._score(x, t.double(), sde), sde)
    x0 = gm.sample(4, g, dtype=F64)
    n = 40000
    t = torch.tensor(1.0, dtype=F64)
    a, s = float(sde._log_alpha(t).exp()), float(sde._log_sigma(t).exp())
    draws = mc_kl(a * x0, torch.tensor(s**2, dtype=F64), torch.zeros_like(x0), torch.ones((), dtype=F64), n, g)
    for row in range(4):
        ok, mean, se = z_ok(draws[:, row], float(prior_kl(sde, x0)[row]))
        assert ok, (row, mean, se)
    for step in (2, 7, 20):
        ab = float(sde.alphas_cumprod[step - 1])
        xt = ab**0.5 * x0 + (1 - ab) ** 0.5 * torch.randn(x0.shape, generator=g, dtype=F64)
        kl = transition_kl(model, x0, xt, step)
        mean_q, var = posterior_mean_var(sde, x0, xt, step)
        mean_p, var_p = elbo.model_mean_var(model, xt, step)
        assert var_p == var
        draws = mc_kl(mean_q, torch.tensor(var, dtype=F64), mean_p, torch.tensor(var, dtype=F64), n, g)
        for row in range(4):
            ok, mean, se = z_ok(draws[:, row], float(kl[row]))
            assert ok, (step, row, mean, se, float(kl[row]))
        assert (kl > 1e-3).all()  # the mismatch is large enough for the check to bite


def test_posterior_is_bayes_rule_of_the_forward_kernels():
    """log q(x_{t−1}|x_0) + log q(x_t|x_{t−1}) − log q(x_t|x_0) = log N(x_{t−1}; μ̃_t, β̃_t) pointwise."""
    g = torch.Generator().manual_seed(2)
    sde = sd.DiscreteVPSDE.linear(30)
    normal = lambda x, m, v: torch.distributions.Normal(m, v**0.5).log_prob(x)
    for step in (2, 5, 30):
        x0, xt, xprev = (torch.randn(64, 1, generator=g, dtype=F64) for _ in range(3))
        a_prev, a_t, beta = float(sde.alphas_cumprod[step - 2]), float(sde.alphas_cumprod[step - 1]), float(sde.betas[step - 1])
        bayes = (normal(xprev, a_prev**0.5 * x0, 1 - a_prev) + normal(xt, (1 - beta) ** 0.5 * xprev, beta)
                 - normal(xt, a_t**0.5 * x0, 1 - a_t))
        mean, var = posterior_mean_var(sde, x0, xt, step)
        torch.testing.assert_close(normal(xprev, mean, var), bayes, rtol=1e-9, atol=1e-9)


def test_gaussian_kl_closed_form_and_factor_two_mutation_is_caught(monkeypatch):
    m1, v1, m2, v2 = (torch.tensor(x, dtype=F64) for x in (0.3, 0.5, -0.2, 1.7))
    g = torch.Generator().manual_seed(3)
    draws = mc_kl(m1.reshape(1, 1), v1, m2.reshape(1, 1), v2, 200000, g)[:, 0]
    assert z_ok(draws, float(gaussian_kl(m1, v1, m2, v2)))[0]
    # a factor 2 in the KL that discrete_elbo uses must break the Monte-Carlo agreement above
    monkeypatch.setattr(elbo, "gaussian_kl", lambda *a: 2 * (0.5 * (a[3].log() - a[1].log() + (a[1] + (a[0] - a[2]) ** 2) / a[3] - 1)))
    assert not z_ok(draws, float(elbo.gaussian_kl(m1, v1, m2, v2)))[0]
    gm, _, _ = gaussian(1)
    sde = sd.DiscreteVPSDE.linear(10)
    x0 = gm.sample(2, g, dtype=F64)
    assert torch.allclose(prior_kl(sde, x0), 2 * _prior_kl_by_hand(sde, x0))


def _prior_kl_by_hand(sde, x0):
    a2 = float(sde.alphas_cumprod[-1])
    return 0.5 * ((1 - a2) + a2 * x0**2 - 1 - math.log(1 - a2)).sum(1)


# ----- the whole bound on Gaussian data with the exact score -----
@pytest.mark.parametrize("d", [1, 2])
def test_discrete_elbo_matches_closed_form_and_bounds_the_entropy(d):
    g = torch.Generator().manual_seed(10 + d)
    gm, v, mu = gaussian(d)
    sde = discretised_vp(100)
    x0 = gm.sample(3000, g, dtype=F64)
    res = discrete_elbo(gm.score_model(sde), x0, generator=g)
    assert res.terms.shape == (3000, 101)
    prior, recon, diffusion = expected_discrete(sde, v, mu)
    for got, want in ((res.prior, prior), (res.reconstruction, recon), (res.diffusion, diffusion), (res.total, prior + recon + diffusion)):
        ok, mean, se = z_ok(got, want)
        assert ok, (mean, se, want)
    # −E ELBO ≥ E[−log p_data] = entropy, by a margin many standard errors wide
    ok, mean, se = z_ok(res.total, prior + recon + diffusion)
    assert mean - Z * se > entropy(v)
    logp = gm.log_prob(x0)
    assert float((res.total + logp).mean()) > 0


@pytest.mark.parametrize("d", [1, 2])
def test_continuous_elbo_matches_closed_form_and_bounds_the_entropy(d):
    g = torch.Generator().manual_seed(20 + d)
    gm, v, mu = gaussian(d)
    sde = discretised_vp(100)
    x0 = gm.sample(2000, g, dtype=F64)
    res = continuous_elbo(gm.score_model(sde), x0, t_samples=4, generator=g)
    prior, recon, diffusion = expected_continuous(sde, v, mu)
    torch.testing.assert_close(res.prior.mean(), torch.tensor(prior, dtype=F64), rtol=0.05, atol=0.02)  # x0 draws only
    for got, want in ((res.reconstruction, recon), (res.diffusion, diffusion), (res.total, prior + recon + diffusion)):
        ok, mean, se = z_ok(got, want)
        assert ok, (mean, se, want)
    assert prior + recon + diffusion > entropy(v)
    # the standard error is the spread of the draws: for one sample it matches the scatter of repeated estimates
    assert (res.stderr > 0).all() and torch.allclose(res.stderr**2 * res.draws, res.variance)


def test_discrete_elbo_is_looser_than_continuous_and_converges_away_from_t0():
    """Right-endpoint sums of the decreasing MMSE exceed the integral; on a window [0.1, 1] the gap ~ 1/N."""
    g = torch.Generator().manual_seed(30)
    gm, v, mu = gaussian(1)
    x0 = gm.sample(1000, g, dtype=F64)
    gaps = []
    for n in (50, 200, 1000):
        sde = discretised_vp(n)
        res = discrete_elbo(gm.score_model(sde), x0, generator=g)
        full_gap = sum(expected_discrete(sde, v, mu)) - sum(expected_continuous(sde, v, mu))
        assert full_gap > 0
        m = n // 10  # steps t = m+1…N span t ∈ [0.1, 1]; their KLs sit in columns m…N−1
        window = res.terms[:, m:n].sum(1)
        integral = 0.5 * float(torch.log((1 + v * snr(sde, 0.1)) / (1 + v * snr(sde, 1.0))).sum())
        riemann = sum(0.5 * (snr(sde, (t - 1) / n) - snr(sde, t / n)) * mmse(v, snr(sde, t / n)) for t in range(m + 1, n + 1))
        ok, mean, se = z_ok(window, riemann)  # discrete_elbo's terms average to the closed-form sum
        assert ok, (n, mean, se, riemann)
        gaps.append(riemann - integral)
    assert gaps[0] > gaps[1] > gaps[2] > 0
    # first order in 1/N: N ×4 and ×5 shrink the gap by about 4 and 5
    assert 3 < gaps[0] / gaps[1] < 5 and 4 < gaps[1] / gaps[2] < 6


# ----- the discretized decoder -----
def test_discretized_decoder_is_a_distribution_over_the_256_levels():
    levels = torch.linspace(-1, 1, 256, dtype=F64).reshape(-1, 1)
    for mean, std in ((0.13, 0.02), (-0.99, 0.005), (0.999, 0.3), (0.4, 1e-4)):
        logp = elbo.discretized_gaussian_log_likelihood(levels, torch.tensor(mean, dtype=F64), torch.tensor(std, dtype=F64))
        assert abs(float(logp.exp().sum()) - 1) < 1e-9
        normal = torch.distributions.Normal(torch.tensor(mean, dtype=F64), torch.tensor(std, dtype=F64))
        inner = levels[1:-1]
        want = torch.log(normal.cdf(inner + 1 / 255) - normal.cdf(inner - 1 / 255))
        finite = want > -12  # where the float64 cdf difference of the reference is still accurate
        torch.testing.assert_close(logp[1:-1][finite], want[finite], rtol=1e-7, atol=1e-9)


def test_discretized_elbo_gives_bits_per_dim():
    g = torch.Generator().manual_seed(40)
    gm = GaussianMixture([[0.1, -0.2]], [[0.05, 0.05]])
    sde = sd.DiscreteVPSDE.linear(20)
    x0 = (torch.round((gm.sample(64, g, dtype=F64).clamp(-1, 1) + 1) * 127.5) / 127.5 - 1)
    res = discrete_elbo(gm.score_model(sde), x0, decoder="discretized", generator=g)
    assert (res.reconstruction >= 0).all()  # −log of a probability
    torch.testing.assert_close(res.bits_per_dim, res.total / (2 * math.log(2)))
    gauss = discrete_elbo(gm.score_model(sde), x0, generator=torch.Generator().manual_seed(40))
    torch.testing.assert_close(gauss.bits_per_dim, (gauss.total - 2 * math.log(2)) / (2 * math.log(2)) + 8)


# ----- bad inputs -----
def test_bad_inputs_raise_clear_errors():
    gm, _, _ = gaussian(1)
    sde = sd.DiscreteVPSDE.linear(10)
    model = gm.score_model(sde)
    x0 = torch.zeros(3, 1)
    with pytest.raises(ValueError, match="DiscreteVPSDE"):
        discrete_elbo(gm.score_model(VPSDE()), x0)
    with pytest.raises(ValueError, match="decoder"):
        discrete_elbo(model, x0, decoder="laplace")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        discrete_elbo(model, x0 + 2, decoder="discretized")
    with pytest.raises(TypeError, match="x0"):
        discrete_elbo(model, [[0.0]])
    with pytest.raises(ValueError, match="x0"):
        discrete_elbo(model, torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        continuous_elbo(model, torch.full((2, 1), math.nan))
    with pytest.raises(ValueError, match="t_samples"):
        continuous_elbo(model, x0, t_samples=1)
    with pytest.raises(TypeError, match="model"):
        continuous_elbo(lambda x, t: x, x0)
    with pytest.raises(ValueError, match="step"):
        transition_kl(model, x0, x0, 1)
    with pytest.raises(TypeError, match="model_kwargs"):
        discrete_elbo(model, x0, model_kwargs=[1])


# ----- peers and parametrizations -----
def test_posterior_matches_diffusers_ddpm_step_with_fixed_small_variance():
    """diffusers' DDPMScheduler.step (ε prediction, fixed_small, no clipping) samples N(μ̃_t(x_t, x̂_0), β̃_t)."""
    diffusers = pytest.importorskip("diffusers")
    n = 50
    sched = diffusers.DDPMScheduler(num_train_timesteps=n, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                    variance_type="fixed_small", clip_sample=False, prediction_type="epsilon")
    sde = sd.DiscreteVPSDE.linear(n)
    # diffusers keeps its schedule in float32, where 1 − ᾱ_1 ≈ 1e-4 loses 3 digits: hand it ours in float64
    torch.testing.assert_close(sched.alphas_cumprod.double(), sde.alphas_cumprod, rtol=1e-6, atol=0)
    sched.betas, sched.alphas, sched.alphas_cumprod = sde.betas, 1 - sde.betas, sde.alphas_cumprod
    gm, _, _ = gaussian(2)
    model = gm.score_model(sde)
    g = torch.Generator().manual_seed(50)
    xt = torch.randn(8, 2, generator=g, dtype=F64)
    for step in (2, 17, 50):
        eps_hat = model.eps(xt, step / n)
        out = sched.step(eps_hat, step - 1, xt, generator=torch.Generator().manual_seed(step)).prev_sample
        noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(step), dtype=F64)
        mean, var = elbo.model_mean_var(model, xt, step)
        torch.testing.assert_close(float(sched._get_variance(step - 1)), var, rtol=1e-12, atol=0)
        torch.testing.assert_close(out.double(), mean + var**0.5 * noise, rtol=1e-10, atol=1e-12)


def test_eps_network_on_step_indices_gives_the_same_elbo():
    """An ε-prediction network fed DDPM step indices i = t − 1 sees the same x_t as the score model."""
    gm, _, _ = gaussian(1)
    sde = sd.DiscreteVPSDE.linear(30)
    sigmas = sde.sigma(sde.step_time(torch.arange(30)))
    eps_net = lambda x, i: -sigmas[i].reshape(-1, 1).to(x.dtype) * gm._score(x, sde.step_time(i), sde)
    x0 = gm.sample(16, torch.Generator().manual_seed(60), dtype=F64)
    by_score = discrete_elbo(gm.score_model(sde), x0, generator=torch.Generator().manual_seed(61))
    by_index = discrete_elbo(sd.ScoreModel(eps_net, sde, prediction="eps", time_input="index"), x0,
                             generator=torch.Generator().manual_seed(61))
    torch.testing.assert_close(by_index.terms, by_score.terms, rtol=1e-9, atol=1e-9)
