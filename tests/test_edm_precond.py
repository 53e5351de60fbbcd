"""EDM preconditioning (Karras et al. 2022, Table 1) as ScoreModel(prediction="edm"): the network's inputs and the
skip/output scalings against the closed forms on VP, VE and a tabulated SDE; the optimal F gives the exact x̂_0;
diffusers' EDM preconditioner is the same denoiser; samplers on an EDM-parametrised exact GMM land where the
exact-score model lands."""
from __future__ import annotations

import math
import zlib

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.model import Prediction
from test_model import SDES, _alpha_sigma_reference  # VP, VE, a from_coefficients SDE; α, σ written independently

F64 = torch.float64
SIGMA_DATA = 0.7  # not the default 0.5, so a hard-coded σ_d would fail


def reference_scalings(sigma_tilde: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) of Karras et al. 2022, Table 1 (EDM column)."""
    norm = sigma_tilde**2 + sigma_data**2
    return sigma_data**2 / norm, sigma_tilde * sigma_data / norm.sqrt(), 1 / norm.sqrt(), 0.25 * sigma_tilde.log()


def draw(name: str, shape=(6, 3)):
    sde = SDES[name]
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    t = sde.eps + (sde.T - sde.eps) * torch.rand(shape[0], generator=gen, dtype=F64)
    x = torch.randn(shape, generator=gen, dtype=F64)
    out = torch.randn(shape, generator=gen, dtype=F64)
    return sde, t, x, out


class Recorder:
    """A net returning a fixed output and recording its inputs."""

    def __init__(self, out):
        self.out, self.seen = out, {}

    def __call__(self, x, c_noise, **kwargs):
        self.seen.update(x=x, c_noise=c_noise, kwargs=kwargs)
        return self.out


@pytest.mark.parametrize("sde_name", list(SDES))
def test_net_inputs_and_output_scalings_match_the_closed_forms(sde_name):
    sde, t, x, out = draw(sde_name)
    alpha, sigma = (v[:, None] for v in _alpha_sigma_reference(sde_name, sde, t))
    c_skip, c_out, c_in, c_noise = reference_scalings(sigma / alpha)
    net = Recorder(out)
    model = sd.ScoreModel(net, sde, prediction="edm", sigma_data=SIGMA_DATA)
    rtol = 1e-7 if sde_name == "coefficients" else 1e-10  # tabulated α, σ are interpolated
    pred = model.predict(x, t, y=3)
    torch.testing.assert_close(net.seen["x"], c_in * x / alpha, rtol=rtol, atol=rtol)
    assert net.seen["c_noise"].shape == (6,) and net.seen["c_noise"].dtype == F64 and net.seen["kwargs"] == {"y": 3}
    torch.testing.assert_close(net.seen["c_noise"], c_noise[:, 0], rtol=rtol, atol=rtol)
    x0 = c_skip * x / alpha + c_out * out
    torch.testing.assert_close(pred.x0, x0, rtol=rtol, atol=rtol)
    torch.testing.assert_close(pred.eps, (x - alpha * x0) / sigma, rtol=rtol, atol=rtol)
    torch.testing.assert_close(model(x, t), out, rtol=0, atol=0)  # forward: the raw F_θ(c_in x̃, c_noise)
    torch.testing.assert_close(net.seen["x"], c_in * x / alpha, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_the_samplers_fast_path_agrees_with_predict(sde_name):
    """Samplers call _predict with a float t and float α, σ (or none): same x̂_0 and the same (batch,) c_noise."""
    sde, t, x, out = draw(sde_name)
    model = sd.ScoreModel(Recorder(out), sde, prediction="edm", sigma_data=SIGMA_DATA)
    t0 = float(t[0])
    reference = model.predict(x, torch.full((6,), t0, dtype=F64)).x0
    a, s = float(sde.alpha(t0)), float(sde.sigma(t0))
    for alpha, sigma in ((a, s), (None, None)):
        pred = model._predict(x, t0, None, alpha, sigma)
        assert model.net.fn.seen["c_noise"].shape == (6,)
        torch.testing.assert_close(pred.x0, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_the_optimal_network_gives_the_exact_x0(sde_name):
    """F* = (x0 − c_skip x̃)/c_out, the minimiser of EDM's loss, makes D(x̃; σ̃) = x0 (so ε and the score too)."""
    sde, t, x0, eps = draw(sde_name)
    alpha, sigma = (v[:, None] for v in _alpha_sigma_reference(sde_name, sde, t))
    xt = alpha * x0 + sigma * eps
    c_skip, c_out, _, _ = reference_scalings(sigma / alpha)
    model = sd.ScoreModel(lambda u, c: (x0 - c_skip * xt / alpha) / c_out, sde, prediction="edm", sigma_data=SIGMA_DATA)
    rtol = 1e-7 if sde_name == "coefficients" else 1e-10
    torch.testing.assert_close(model.x0(xt, t), x0, rtol=rtol, atol=rtol)
    torch.testing.assert_close(model.eps(xt, t), eps, rtol=rtol, atol=rtol)
    torch.testing.assert_close(model.score(xt, t), -eps / sigma, rtol=rtol, atol=rtol)


def peer_net(u, c_noise):
    """Any smooth F(c_in x̃, c_noise) — the same function handed to both preconditioners."""
    return torch.sin(1.3 * u + c_noise.reshape(-1, 1)) + 0.2 * c_noise.reshape(-1, 1) ** 2


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_equals_diffusers_edm_preconditioning(sde_name):
    """diffusers' EDMEulerScheduler preconditions a VE state: D = c_skip x + c_out F(c_in x, ¼ ln σ). On VE our model is
    that denoiser at σ = σ(t); on VP it is that denoiser applied to x̃ = x/α at σ̃ = σ/α."""
    from diffusers import EDMEulerScheduler

    sched = EDMEulerScheduler(sigma_data=SIGMA_DATA)
    sde, t, x, _ = draw(sde_name, (8, 4))
    x = 3 * x
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    sigma_tilde = sigma / alpha
    x_tilde = x / alpha
    ours = sd.ScoreModel(peer_net, sde, prediction="edm", sigma_data=SIGMA_DATA).x0(x, t)
    net_out = peer_net(sched.precondition_inputs(x_tilde, sigma_tilde), sched.precondition_noise(sigma_tilde))
    theirs = sched.precondition_outputs(x_tilde, net_out, sigma_tilde)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


# ----- samplers on an EDM-parametrised exact GMM -----
GMM = sd.data.GaussianMixture([[-2.0, 0.0], [1.0, 1.5], [1.0, -1.5]], [0.05, 0.1, 0.08])


def edm_gmm_model(sde, sigma_data: float = SIGMA_DATA) -> sd.ScoreModel:
    """An EDM model whose F is the exact optimum: it recovers σ̃ and x̃ from its own inputs (c_in x̃, c_noise)."""
    exact = GMM.score_model(sde)

    def net(u, c_noise):
        sigma_tilde = torch.exp(4 * c_noise.double())[:, None]
        norm = sigma_tilde**2 + sigma_data**2
        x_tilde = u.double() * norm.sqrt()
        t = sde._t_of_log_snr(-sigma_tilde[:, 0].log()).clamp(0, sde.T)  # float32 c_noise may round past λ(T)
        x0 = exact.x0(sde.alpha(t)[:, None] * x_tilde, t)
        c_skip, c_out = sigma_data**2 / norm, sigma_tilde * sigma_data / norm.sqrt()
        return ((x0 - c_skip * x_tilde) / c_out).to(u.dtype)

    return sd.ScoreModel(net, sde, prediction="edm", sigma_data=sigma_data)


SAMPLERS = {
    "ddim": lambda: sd.samplers.DDIM(steps=20),
    "dpm_solver": lambda: sd.samplers.DPMSolver(steps=10, order=2),
    "heun": lambda: sd.samplers.Heun(steps=10),
    "ddpm": lambda: sd.samplers.DDPM(steps=20),
    "euler_maruyama": lambda: sd.samplers.EulerMaruyama(steps=20),
}


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("sampler_name", list(SAMPLERS))
def test_samplers_on_an_edm_model_land_where_the_exact_model_lands(sampler_name, sde_name):
    sde = {"vp": sd.VPSDE(), "ve": sd.VESDE(0.01, 20.0)}[sde_name]
    x_T = sde.prior_sample((256, 2), torch.Generator().manual_seed(11), dtype=F64)
    runs = [SAMPLERS[sampler_name]().sample(m, x_T=x_T, generator=torch.Generator().manual_seed(12))
            for m in (GMM.score_model(sde), edm_gmm_model(sde))]
    assert runs[0].nfe == runs[1].nfe
    torch.testing.assert_close(runs[1].x, runs[0].x, rtol=1e-6, atol=1e-6)
    nearest = torch.cdist(runs[1].x, GMM.means).min(1).values  # and that is on the mixture (component stds ≤ 0.32)
    assert float(nearest.median()) < 0.5


def test_arguments_are_checked_and_shown():
    net = Recorder(torch.zeros(2, 2))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="sigma_data must be a positive"):
            sd.ScoreModel(net, sd.VPSDE(), prediction="edm", sigma_data=bad)
    with pytest.raises(ValueError, match="prediction='edm'.*time_input='continuous'"):
        sd.ScoreModel(net, sd.DiscreteVPSDE.linear(), prediction="edm", time_input="index")
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="edm", sigma_data=0.25)
    assert model.sigma_data == 0.25 and "prediction='edm'" in repr(model) and "sigma_data=0.25" in repr(model)
    assert isinstance(model.predict(torch.zeros(2, 2), 0.5), Prediction)
    with pytest.raises(ValueError, match="net output has shape"):
        sd.ScoreModel(Recorder(torch.zeros(3, 2)), sd.VPSDE(), prediction="edm").x0(torch.zeros(2, 2), 0.5)
    assert math.isfinite(float(model.predict(torch.ones(2, 2), 0.5).x0.sum()))


def test_float32_sampling_on_an_edm_model():
    """In float32 (c_noise in float32) DDIM still lands on the exact model's samples to float32 accuracy."""
    sde = sd.VPSDE()
    x_T = sde.prior_sample((256, 2), torch.Generator().manual_seed(13))
    runs = [sd.samplers.DDIM(steps=20).sample(m, x_T=x_T) for m in (GMM.score_model(sde), edm_gmm_model(sde))]
    assert runs[1].x.dtype == torch.float32
    torch.testing.assert_close(runs[1].x, runs[0].x, rtol=1e-4, atol=1e-4)
