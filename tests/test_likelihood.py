"""Exact log-likelihoods through the probability-flow ODE, checked against closed forms.

With the exact score of a Gaussian mixture the model's marginal at t0 *is* p_t0, so the solver must give
log p_t0(x) up to the one approximation the method makes: the prior N(0, prior_std² I) stands in for p_T.
That gap is known per sample, log N(z; 0, prior_std²) − log p_T(z) at z = x(T), so every test checks

    logp − log p_t0(x) = prior_logp(z) − log p_T(z)    (i.e. Δ = log p_t0(x) − log p_T(z))

to solver tolerance, and |logp − log p_t0(x)| ≤ |that gap| + solver tolerance. A wrong sign of the
divergence term or a wrong ½ in the drift breaks the identity by O(|Δ|) ≥ 0.5 nats (checked by mutation).
"""
import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.data.gmm import GaussianMixture, eight_gaussians
from sde_diffusion.likelihood import (
    _draw_probes,
    _exact_divergence,
    _hutchinson_divergence,
    bits_per_dim,
    bits_per_dim_of_logp,
    dequantize,
    log_likelihood,
)

F64 = torch.float64
RTOL = ATOL = 1e-6
# measured identity error at rtol = atol = 1e-6: ≤ 3e-5 nats with dopri5, ≤ 2e-7 with the default unipc (VP, eight
# Gaussians, 64 points); 30× margin for dopri5
SOLVER_TOL = 1e-3

ANISO = GaussianMixture([[0.5, -1.0, 0.3]], [[[1.0, 0.6, 0.0], [0.6, 0.8, 0.2], [0.0, 0.2, 0.4]]])


def differentiable_score_model(gmm: GaussianMixture, sde: sd.LinearSDE) -> sd.ScoreModel:
    """The exact mixture score −Σ_k r_k (α²Σ_k + σ²I)⁻¹(x − αμ_k), kept on the autograd graph of x.

    (``GaussianMixture.score_model`` detaches x, so autograd cannot differentiate it.)
    """

    def score(x, t):
        t64 = t.double()
        alpha, sigma = sde._log_alpha(t64).exp(), sde._log_sigma(t64).exp()
        log_c, z, var = gmm._log_components(x.reshape(x.shape[0], -1).double(), alpha, sigma)
        resp = torch.softmax(log_c, dim=1)
        return (-torch.einsum("bk,kde,bke->bd", resp, gmm.eigvecs, z / var)).reshape(x.shape).to(x.dtype)

    return sd.ScoreModel.from_score_fn(score, sde)


def tabulated_sde() -> sd.LinearSDE:
    """A VP-like SDE with a quadratic β(t) = 0.1 + 19.9 t², known only through its coefficients."""
    beta = lambda t: 0.1 + 19.9 * t**2  # noqa: E731
    return sd.LinearSDE.from_coefficients(f=lambda t: -0.5 * beta(t), g=lambda t: beta(t).sqrt())


SDES = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(sigma_min=0.01, sigma_max=50.0),
    "tabulated": tabulated_sde,
}


def prior_gap(gmm, sde, z):
    """log N(z; 0, prior_std² I) − log p_T(z): the error the prior substitution makes at z."""
    return sde.prior_logp(z) - gmm.marginal_log_prob(z, sde.T, sde)


def test_differentiable_helper_is_the_exact_score():
    sde, gmm = sd.VPSDE(), eight_gaussians()
    x = gmm.sample(16, torch.Generator().manual_seed(1), dtype=F64)
    t = torch.full((16,), 0.2, dtype=F64)
    assert torch.allclose(differentiable_score_model(gmm, sde).score(x, t), gmm.score(x, t, sde), atol=1e-12)


@pytest.mark.parametrize("name", list(SDES))
def test_gaussian_logp_matches_closed_form(name):
    sde = SDES[name]()
    t0 = 0.05 if name == "tabulated" else None  # also a user-given t0
    x = ANISO.sample(32, torch.Generator().manual_seed(0), dtype=F64)
    res = log_likelihood(differentiable_score_model(ANISO, sde), x, rtol=RTOL, atol=ATOL, t0=t0)
    t_start = sde.eps if t0 is None else t0
    truth = ANISO.marginal_log_prob(x, t_start, sde)
    z_exact = ANISO.flow(x, t_start, sde.T, sde)  # the closed-form probability flow
    gap = prior_gap(ANISO, sde, z_exact)
    assert torch.allclose(res.z, z_exact, rtol=1e-4, atol=1e-4)
    assert float((res.logp - truth - gap).abs().max()) < SOLVER_TOL
    assert ((res.logp - truth).abs() <= gap.abs() + SOLVER_TOL).all()
    assert torch.allclose(res.logp, res.prior_logp + res.delta_logp)
    assert float(res.delta_logp.abs().min()) > 0.5  # the divergence term matters: a sign or ½ error shows
    assert res.nfe > 10


def test_eight_gaussians_logp_matches_closed_form():
    sde, gmm = sd.VPSDE(), eight_gaussians()
    x = gmm.sample(64, torch.Generator().manual_seed(2), dtype=F64)
    res = log_likelihood(differentiable_score_model(gmm, sde), x, rtol=RTOL, atol=ATOL)
    truth = gmm.marginal_log_prob(x, sde.eps, sde)
    gap = prior_gap(gmm, sde, res.z)
    assert float((res.delta_logp - (truth - gmm.marginal_log_prob(res.z, sde.T, sde))).abs().max()) < SOLVER_TOL
    assert ((res.logp - truth).abs() <= gap.abs() + SOLVER_TOL).all()
    assert float(res.delta_logp.abs().mean()) > 0.5  # the divergence term matters: a sign or ½ error shows
    # a looser tolerance is cheaper (the default unipc at 1e-5: ~160 NFE on this batch, at 1e-6 ~260)
    assert log_likelihood(differentiable_score_model(gmm, sde), x, rtol=1e-5, atol=1e-5).nfe < res.nfe


def test_exact_divergence_is_minus_trace_of_precision():
    """For one Gaussian ∂s/∂x = −(α²Σ + σ²I)⁻¹, so ∇·s = −tr (α²Σ + σ²I)⁻¹."""
    sde = sd.VPSDE()
    t = 0.3
    x = ANISO.sample(4, torch.Generator().manual_seed(3), dtype=F64).requires_grad_(True)
    score = differentiable_score_model(ANISO, sde).score(x, t)
    a2, s2 = float(sde.alpha(t)) ** 2, float(sde.sigma(t)) ** 2
    expected = -torch.linalg.inv(a2 * ANISO.covs[0] + s2 * torch.eye(3, dtype=F64)).trace()
    assert torch.allclose(_exact_divergence(score, x), expected.expand(4), atol=1e-10)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_at_a_fixed_point(probe):
    sde, n = sd.VPSDE(), 4000
    t = 0.3
    point = torch.tensor([[0.2, -0.4, 0.7]], dtype=F64)
    y = point.expand(n, 3).clone().requires_grad_(True)  # one row per probe: n independent estimates
    score = differentiable_score_model(ANISO, sde).score(y, t)
    eps = _draw_probes(probe, 1, y, torch.Generator().manual_seed(4))
    if probe == "rademacher":
        assert set(eps.unique().tolist()) == {-1.0, 1.0}
    estimates = _hutchinson_divergence(score, y, eps)
    exact = _exact_divergence(score[:1], y)[0]
    z = (estimates.mean() - exact) / (estimates.std() / math.sqrt(n))
    assert abs(float(z)) < 4
    assert float(estimates.std()) > 0.05  # off-diagonal Jacobian entries: the test is not vacuous


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_likelihood_averages_to_exact(probe):
    sde, reps = sd.VPSDE(), 100
    points = ANISO.sample(2, torch.Generator().manual_seed(5), dtype=F64)
    model = differentiable_score_model(ANISO, sde)
    exact = log_likelihood(model, points, rtol=1e-5, atol=1e-5).logp
    x = points.repeat_interleave(reps, 0)  # each row gets its own probe
    est = log_likelihood(model, x, exact_divergence=False, probe=probe, rtol=1e-5, atol=1e-5,
                         generator=torch.Generator().manual_seed(6)).logp.reshape(2, reps)
    se = est.std(1) / math.sqrt(reps)
    assert (se > 1e-3).all()  # the estimates do vary
    assert ((est.mean(1) - exact).abs() <= 4 * se + SOLVER_TOL).all()
    # probes come only from the generator: same seed, same numbers
    again = log_likelihood(model, x[:4], exact_divergence=False, probe=probe, generator=torch.Generator().manual_seed(6))
    first = log_likelihood(model, x[:4], exact_divergence=False, probe=probe, generator=torch.Generator().manual_seed(6))
    assert torch.equal(again.logp, first.logp)


def test_more_probes_reduce_the_variance():
    sde, reps = sd.VPSDE(), 64
    model = differentiable_score_model(ANISO, sde)
    x = ANISO.sample(1, torch.Generator().manual_seed(7), dtype=F64).expand(reps, 3).clone()
    spread = {}
    for k in (1, 8):
        est = log_likelihood(model, x, exact_divergence=False, probes=k, probe="gaussian", rtol=1e-4, atol=1e-4,
                             generator=torch.Generator().manual_seed(8)).logp
        spread[k] = float(est.var())
    assert spread[8] < spread[1] / 3  # 1/K in expectation (8×); 3× leaves room for sampling noise


def test_bits_per_dim_formula_pieces():
    d = 12
    # a density flat on [−1, 1]^D: exactly 8 bits/dim; flat on [−2, 2]^D (half the density per dim): 9
    assert float(bits_per_dim_of_logp(torch.tensor([-d * math.log(2.0)], dtype=F64), d)) == pytest.approx(8.0, abs=1e-12)
    assert float(bits_per_dim_of_logp(torch.tensor([-d * math.log(4.0)], dtype=F64), d)) == pytest.approx(9.0, abs=1e-12)
    u = torch.tensor([[0, 255, 17]], dtype=torch.uint8)
    x = dequantize(u, torch.Generator().manual_seed(0), F64)
    assert ((x >= u / 256) & (x < (u.double() + 1) / 256)).all()


def test_bits_per_dim_of_uniform_images_under_a_matched_gaussian():
    """Uniform 8-bit images dequantise to x' ~ U[−1, 1)^D. The model: exact score of N(0, ⅓ I) data
    (uniform's mean and variance), whose marginal at t0 is N(0, v I), v = α²/3 + σ². Then per image
    bits/dim = −(log N(x'; 0, v) + D log 2)/(D log 2) + 8, and over images the mean is
    8 + [½ log(2πv) + 1/(6v) − log 2]/log 2 = 8 + KL(U[−1,1] ‖ N(0, v)) in bits ≈ 8.255 (not 8: a Gaussian
    is not flat on [−1, 1])."""
    sde, d, b = sd.VPSDE(), 4, 256
    gauss = GaussianMixture([[0.0] * d], [[1.0 / 3.0] * d])
    model = differentiable_score_model(gauss, sde)
    images = torch.randint(0, 256, (b, 1, 2, 2), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    res = bits_per_dim(model, images, generator=torch.Generator().manual_seed(10), rtol=1e-5, atol=1e-5)
    x = (2 * dequantize(images, torch.Generator().manual_seed(10), F64) - 1).reshape(b, d)  # the same draws
    gap = prior_gap(gauss, sde, gauss.flow(x, sde.eps, sde.T, sde))
    expected = bits_per_dim_of_logp(gauss.marginal_log_prob(x, sde.eps, sde) + gap, d)
    assert float((res.per_image - expected).abs().max()) < SOLVER_TOL / (d * math.log(2))
    v = float(sde.alpha(sde.eps)) ** 2 / 3 + float(sde.sigma(sde.eps)) ** 2
    analytic = 8 + (0.5 * math.log(2 * math.pi * v) + 1 / (6 * v) - math.log(2)) / math.log(2)
    assert analytic == pytest.approx(8.2547, abs=1e-3)
    assert abs(res.mean - analytic) < 4 * res.ci95 / 1.96
    assert 0 < res.ci95 < 0.1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"probe": "normal"}, ValueError, "probe"),
        ({"probes": 0}, ValueError, "probes"),
        ({"t0": 0.0}, ValueError, "t0"),
        ({"t0": 1.0}, ValueError, "t0"),
        ({"t0": "0.1"}, TypeError, "t0"),
        ({"method": "euler"}, ValueError, "method"),
        ({"rtol": -1.0}, ValueError, "rtol"),
        ({"exact_divergence": 1}, TypeError, "exact_divergence"),
    ],
)
def test_log_likelihood_rejects_bad_arguments(kwargs, error, match):
    model = differentiable_score_model(ANISO, sd.VPSDE())
    with pytest.raises(error, match=match):
        log_likelihood(model, torch.zeros(2, 3, dtype=F64), **kwargs)


def test_log_likelihood_rejects_bad_inputs():
    sde = sd.VPSDE()
    model = differentiable_score_model(ANISO, sde)
    with pytest.raises(ValueError, match="x"):
        log_likelihood(model, torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="x"):
        log_likelihood(model, torch.tensor([[0.0, math.nan, 0.0]], dtype=F64))
    with pytest.raises(TypeError, match="x"):
        log_likelihood(model, torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="model"):
        log_likelihood(lambda x, t: x, torch.zeros(2, 3, dtype=F64))
    with pytest.raises(TypeError, match="differentiable"):  # a score that detaches x has no divergence to take
        log_likelihood(sd.ScoreModel.from_score_fn(lambda x, t: -x.detach(), sde), torch.zeros(2, 3, dtype=F64))


def test_gaussian_mixture_score_model_is_differentiable_for_likelihoods():
    sde = sd.VPSDE()
    x = ANISO.sample(4, torch.Generator().manual_seed(3), dtype=F64)
    got = log_likelihood(ANISO.score_model(sde), x, rtol=1e-6, atol=1e-6).logp
    ref = log_likelihood(differentiable_score_model(ANISO, sde), x, rtol=1e-6, atol=1e-6).logp
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-8)


def test_bits_per_dim_rejects_bad_inputs():
    model = differentiable_score_model(ANISO, sd.VPSDE())
    images = torch.zeros(2, 3, dtype=torch.uint8)
    with pytest.raises(TypeError, match="uint8"):
        bits_per_dim(model, images.float())
    with pytest.raises(ValueError, match="dequantization"):
        bits_per_dim(model, images, dequantization="variational")
    with pytest.raises(ValueError, match="repeats"):
        bits_per_dim(model, images, repeats=0)
    with pytest.raises(ValueError, match="images_uint8"):
        bits_per_dim(model, torch.zeros(3, dtype=torch.uint8))


def test_classifier_guidance_is_refused():
    model = differentiable_score_model(ANISO, sd.VPSDE())
    guided = sd.guidance.ClassifierGuidance(model, lambda x, t: torch.zeros(x.shape[0], 2, dtype=x.dtype), scale=1.0)
    with pytest.raises(TypeError, match="ClassifierGuidance"):
        log_likelihood(guided, torch.zeros(2, 3, dtype=F64), model_kwargs={"y": torch.zeros(2, dtype=torch.int64)})


def test_model_kwargs_reach_the_network():
    """A score that reads a shift from its kwargs: the data N(μ + shift, Σ) gives the shifted density."""
    sde, shift = sd.VPSDE(), torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    shifted = GaussianMixture(ANISO.means + shift, ANISO.covs)
    exact = differentiable_score_model(shifted, sde)
    base = differentiable_score_model(ANISO, sde)
    model = sd.ScoreModel.from_score_fn(lambda x, t, shift=None: exact.score(x, t) if shift else base.score(x, t), sde)
    x = shifted.sample(8, torch.Generator().manual_seed(11), dtype=F64)
    with_kwargs = log_likelihood(model, x, model_kwargs={"shift": True}, rtol=RTOL, atol=ATOL)
    assert torch.allclose(with_kwargs.logp, log_likelihood(exact, x, rtol=RTOL, atol=ATOL).logp)
    truth = shifted.marginal_log_prob(x, sde.eps, sde)
    assert float((with_kwargs.logp - truth).abs().max()) < SOLVER_TOL + float(prior_gap(shifted, sde, with_kwargs.z).abs().max())


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8"])
def test_other_adaptive_methods_agree(method):
    sde = sd.VPSDE()
    x = ANISO.sample(8, torch.Generator().manual_seed(12), dtype=F64)
    res = log_likelihood(differentiable_score_model(ANISO, sde), x, method=method, rtol=RTOL, atol=ATOL)
    z_exact = ANISO.flow(x, sde.eps, sde.T, sde)
    truth = ANISO.marginal_log_prob(x, sde.eps, sde) + prior_gap(ANISO, sde, z_exact)
    assert float((res.logp - truth).abs().max()) < SOLVER_TOL
