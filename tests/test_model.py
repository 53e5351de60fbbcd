"""ScoreModel: every parametrisation recovers the true ε, score and x_0; the exact GMM score model
agrees with autograd and finite differences of the GMM's log-density; kwargs and time inputs reach the net."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.samplers.base import SamplingContext

F64 = torch.float64


def _coefficient_sde():
    return sd.LinearSDE.from_coefficients(lambda t: -0.4 - 2.0 * t**2, lambda t: torch.sqrt(0.3 + 4.0 * t + torch.sin(3 * t) ** 2))


SDES = {
    "vp": sd.VPSDE(),
    "ve": sd.VESDE(0.01, 50.0),
    "coefficients": _coefficient_sde(),
}


def _alpha_sigma_reference(name, sde, t: torch.Tensor):
    """α, σ of each SDE written independently here (the tabulated one via scipy quadrature)."""
    tt = t.numpy()
    if name == "vp":
        a = np.exp(-0.25 * tt**2 * 19.9 - 0.05 * tt)
        return torch.from_numpy(a), torch.from_numpy(np.sqrt(1 - a**2))
    if name == "ve":
        return torch.ones_like(t), torch.from_numpy(0.01 * 5000.0**tt)
    from scipy import integrate

    def log_alpha(s):
        return -0.4 * s - 2.0 * s**3 / 3

    def g2(s):
        return 0.3 + 4.0 * s + math.sin(3 * s) ** 2

    a = np.array([math.exp(log_alpha(s)) for s in tt])
    var = np.array([math.exp(2 * log_alpha(s)) * integrate.quad(lambda u: g2(u) * math.exp(-2 * log_alpha(u)), 0, s, epsabs=1e-14, epsrel=1e-12)[0] for s in tt])
    return torch.from_numpy(a), torch.from_numpy(np.sqrt(var))


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("prediction", ["eps", "score", "x0", "v"])
@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 3, 3)], ids=["vectors", "images"])
def test_every_parametrisation_recovers_the_truth(sde_name, prediction, shape):
    sde = SDES[sde_name]
    gen = torch.Generator().manual_seed(zlib.crc32(f"{sde_name}-{prediction}-{len(shape)}".encode()))
    B = shape[0]
    x0 = torch.randn(shape, generator=gen, dtype=F64)
    eps = torch.randn(shape, generator=gen, dtype=F64)
    t = sde.eps + (sde.T - sde.eps) * torch.rand(B, generator=gen, dtype=F64)
    a, s = _alpha_sigma_reference(sde_name, sde, t)
    view = (B,) + (1,) * (len(shape) - 1)
    a, s = a.reshape(view), s.reshape(view)
    xt = a * x0 + s * eps
    truth = {"eps": eps, "score": -eps / s, "x0": x0, "v": a * eps - s * x0}[prediction]
    seen = {}

    def net(x, tn):
        seen["x"], seen["t"] = x, tn
        return truth

    model = sd.ScoreModel(net, sde, prediction=prediction)
    rtol = 1e-7 if sde_name == "coefficients" else 1e-10  # tabulated α, σ are interpolated (~1e-9)
    torch.testing.assert_close(model.eps(xt, t), eps, rtol=rtol, atol=rtol)
    torch.testing.assert_close(model.score(xt, t), -eps / s, rtol=rtol, atol=rtol)
    torch.testing.assert_close(model.x0(xt, t), x0, rtol=rtol, atol=rtol)
    pred = model.predict(xt, t)
    torch.testing.assert_close(pred.score, -pred.eps / s, rtol=1e-10, atol=1e-10)
    assert seen["x"] is xt
    assert seen["t"].shape == (B,) and seen["t"].dtype == F64
    torch.testing.assert_close(seen["t"], t, rtol=0, atol=0)
    assert torch.equal(model(xt, t), truth)


def test_float32_views_stay_float32_and_close():
    sde = sd.VPSDE()
    x0, eps = torch.randn(5, 2), torch.randn(5, 2)
    t = torch.linspace(0.05, 0.95, 5)
    xt = sde.perturb(x0, t, eps)
    model = sd.ScoreModel(lambda x, tn: eps, sde)
    out = model.x0(xt, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# from_score_fn with the exact GMM score
# --------------------------------------------------------------------------------------------
GMM = sd.data.GaussianMixture(
    means=[[1.0, -0.5], [-1.5, 1.0], [0.2, 2.0]],
    covs=[[[0.3, 0.1], [0.1, 0.2]], [[0.05, 0.0], [0.0, 0.4]], [[0.2, -0.15], [-0.15, 0.25]]],
    weights=[0.5, 0.3, 0.2],
)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(0.01, 50.0), sd.CosineVPSDE(), sd.DiscreteVPSDE.linear()], ids=lambda s: type(s).__name__)
def test_gmm_score_model_is_gradient_of_marginal_log_prob(sde):
    gen = torch.Generator().manual_seed(0)
    B = 16
    t = torch.cat([torch.tensor([sde.eps, sde.T], dtype=F64), sde.eps + (sde.T - sde.eps) * torch.rand(B - 2, generator=gen, dtype=F64)])
    scale = float(sde.sigma(sde.T)) if isinstance(sde, sd.VESDE) else 1.0
    x = 2.0 * scale * torch.randn(B, 2, generator=gen, dtype=F64)
    model = GMM.score_model(sde)
    assert model.prediction == "score"
    score = model.score(x, t)

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(GMM.marginal_log_prob(xg, t, sde).sum(), xg)
    torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(GMM.score(x, t, sde), score, rtol=0, atol=0)

    # central finite differences of log p_t, per coordinate
    fd = torch.zeros_like(x)
    for d in range(2):
        h = 1e-5 * max(scale, 1.0)
        e = torch.zeros_like(x)
        e[:, d] = h
        fd[:, d] = (GMM.marginal_log_prob(x + e, t, sde) - GMM.marginal_log_prob(x - e, t, sde)) / (2 * h)
    torch.testing.assert_close(score, fd, rtol=1e-5, atol=1e-5 * float(score.abs().max()))


def test_gmm_marginal_log_prob_is_mixture_of_noised_gaussians():
    from scipy import stats

    sde = sd.VPSDE()
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = 0.3
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    comps = [
        math.log(w) + stats.multivariate_normal(a * np.array(m), a * a * np.array(c) + s * s * np.eye(2)).logpdf(x.numpy())
        for w, m, c in zip([0.5, 0.3, 0.2], GMM.means.tolist(), GMM.covs.tolist())
    ]
    from scipy.special import logsumexp

    np.testing.assert_allclose(GMM.marginal_log_prob(x, t, sde).numpy(), logsumexp(np.stack(comps), axis=0), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# model kwargs and time inputs reach the network
# --------------------------------------------------------------------------------------------
def test_model_kwargs_reach_the_net():
    sde = sd.VPSDE()
    table = torch.tensor([[1.0, -1.0], [0.5, 2.0], [-3.0, 0.25]], dtype=F64)

    def net(x, t, label):
        return table[label] + 0 * x

    model = sd.ScoreModel(net, sde, prediction="eps")
    x = torch.randn(4, 2, dtype=F64)
    t = torch.full((4,), 0.5, dtype=F64)
    label = torch.tensor([2, 0, 1, 2])
    torch.testing.assert_close(model.eps(x, t, label=label), table[label])
    torch.testing.assert_close(model(x, t, label=label), table[label])
    torch.testing.assert_close(model.score(x, t, label=label), -table[label] / float(sde.sigma(0.5)))
    ctx = SamplingContext(model, {"label": label}, None)
    torch.testing.assert_close(ctx.eps(x, 0.5), table[label])
    with pytest.raises(TypeError):
        model.eps(x, t)  # the net needs its label


def test_time_input_index_feeds_ddpm_steps():
    sde = sd.DiscreteVPSDE.linear()
    seen = {}

    def net(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    model = sd.ScoreModel(net, sde, time_input="index")
    gen = torch.Generator().manual_seed(2)
    t = torch.rand(64, generator=gen, dtype=F64)
    x = torch.randn(64, 2, dtype=F64)
    model.eps(x, t)
    expected = np.clip(np.rint(1000 * t.numpy() - 1), 0, 999).astype(np.int64)
    assert seen["t"].dtype == torch.long
    np.testing.assert_array_equal(seen["t"].numpy(), expected)
    # exactly on the knots t_i = (i + 1)/N the net sees i
    i = torch.tensor([0, 1, 499, 998, 999])
    model.eps(torch.zeros(5, 2, dtype=F64), sde.step_time(i))
    assert torch.equal(seen["t"], i)
    # a scalar t is broadcast to one step per sample
    model.eps(torch.zeros(3, 2, dtype=F64), 0.25)
    assert torch.equal(seen["t"], torch.full((3,), 249))


def test_bad_model_arguments():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="prediction"):
        sd.ScoreModel(lambda x, t: x, sde, prediction="velocity")
    with pytest.raises(ValueError, match="time_input"):
        sd.ScoreModel(lambda x, t: x, sde, time_input="steps")
    with pytest.raises(ValueError, match="time_input"):
        sd.ScoreModel(lambda x, t: x, sde, time_input="index")  # needs a DiscreteVPSDE
    with pytest.raises(ValueError, match="net output"):
        sd.ScoreModel(lambda x, t: x[:, :1], sde).eps(torch.zeros(3, 2), 0.5)
    model = sd.ScoreModel(lambda x, t: x, sde)
    with pytest.raises(ValueError, match="t has shape"):
        model.eps(torch.zeros(3, 2), torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="t must lie"):
        model.score(torch.zeros(3, 2), 1.5)


def test_with_net_shares_sde_and_parametrization_but_not_the_net():
    sde = sd.VPSDE()
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    model = sd.ScoreModel(_LinearNet(a), sde, prediction="x0")
    other = model.with_net(_LinearNet(b))
    assert other.sde is sde and other.prediction == "x0" and other.net.inner is b and model.net.inner is a
    x, t = torch.randn(3, 2), torch.full((3,), 0.4)
    torch.testing.assert_close(other.x0(x, t), b(x))
    torch.testing.assert_close(model.x0(x, t), a(x))
    with pytest.raises(TypeError, match="net must be an nn.Module"):
        model.with_net(lambda x, t: x)


class _LinearNet(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, t):
        return self.inner(x)
