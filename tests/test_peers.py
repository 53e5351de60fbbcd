"""Our samplers against independent implementations and closed forms.

(a) ``samplers.DDPM()`` on ``DiscreteVPSDE.linear()`` reproduces diffusers' ``DDPMScheduler``
    (linear β, fixed_small variance, no clipping, ε-prediction) step for step, with the same ε network
    and the same generator seed: every intermediate state and the output agree to float32 precision
    (and to 1e-10 when both run in float64 on the same β table). ``samplers.DDIM`` (η = 0 and η = 1) on
    the explicit grid t = (i + 1)/1000 of diffusers' timesteps i reproduces ``DDIMScheduler`` with
    ``set_alpha_to_one=True``: diffusers' last step (from i = 0 to "ᾱ_prev = 1") returns the
    predicted x_0, which is exactly our final Tweedie denoise at t = 1/1000.
(b) The torchsde adapter with method="euler" and the native EulerMaruyama discretise the reverse SDE
    identically on a uniform grid (the adapter's time map is then linear), so their laws agree:
    MMD below the noise floor on the GMM; for Gaussian data mean and variance within MC error — with a
    step count coarse enough that both carry a discretisation bias far above that error.
(c) ProbabilityFlowODE(dopri5, rtol = atol = 1e-7) against the closed-form flow for Gaussian data.
"""
from __future__ import annotations

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion.data import GaussianMixture

from _sampler_reference import N_SAMPLES, mmd_stat, noise_floor, reference_gmm

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402


# ============================================================================ (a) diffusers


class EpsNet(torch.nn.Module):
    """A fixed, deterministic ε network of (x, integer step): the exact ε of N(0, c² I) data plus a
    nonlinear x- and step-dependent perturbation, so trajectories stay data-like but are not trivial."""

    def __init__(self, dim: int, alphas_cumprod: torch.Tensor, c: float = 0.7):
        super().__init__()
        g = torch.Generator().manual_seed(123)
        self.register_buffer("w", torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim))
        self.register_buffer("freq", torch.randn(dim, generator=g, dtype=torch.float64))
        self.register_buffer("abar", alphas_cumprod.to(torch.float64))
        self.c = c
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        t = torch.as_tensor(t, device=x.device)
        assert not t.is_floating_point(), "the network expects integer DDPM steps"
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        flat = x.reshape(x.shape[0], -1)
        a = self.abar.to(flat.dtype)[t][:, None]
        exact = (1 - a).sqrt() * flat / (a * self.c**2 + 1 - a)
        wiggle = 0.1 * torch.tanh(flat @ self.w.to(flat.dtype) + torch.sin(0.01 * t[:, None].to(flat.dtype) * self.freq.to(flat.dtype)))
        return (exact + wiggle).reshape(x.shape)


SHAPE = (4, 3, 4, 4)  # images: B, C, H, W


def _ddpm_scheduler(float64: bool = False) -> DDPMScheduler:
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small",
                          clip_sample=False, prediction_type="epsilon")
    if float64:
        # the same β table as DiscreteVPSDE.linear() (diffusers builds it in float32)
        sched.betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        sched.alphas = 1.0 - sched.betas
        sched.alphas_cumprod = torch.cumprod(sched.alphas, 0)
        sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched


def _diffusers_loop(sched, net, seed, dtype, step_kwargs=None):
    """The reference loop, written as diffusers' pipelines do it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=dtype)
    states = [x]
    for t in sched.timesteps:
        eps = net(x, t)
        x = sched.step(eps, t, x, generator=g, **(step_kwargs or {})).prev_sample
        states.append(x)
    return states


def _assert_trajectories_match(ours, theirs, rel):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape == SHAPE and a.dtype == b.dtype
        scale = max(1.0, float(b.abs().max()))
        err = float((a - b).abs().max())
        assert err <= rel * scale, f"state {i}: max |ours - diffusers| = {err:.3e} (scale {scale:.2f})"


@pytest.mark.parametrize("float64", [False, True], ids=["float32", "float64"])
def test_ddpm_reproduces_diffusers_step_for_step(float64):
    dtype = torch.float64 if float64 else torch.float32
    sde = sd.DiscreteVPSDE.linear()
    net = EpsNet(48, sde.alphas_cumprod)
    sched = _ddpm_scheduler(float64)
    theirs = _diffusers_loop(sched, net, seed=7, dtype=dtype)
    assert len(theirs) == 1001

    net.calls = 0
    model = sd.ScoreModel(net, sde, prediction="eps", time_input="index")
    seen = []
    out = S.DDPM().sample(model, shape=SHAPE, generator=torch.Generator().manual_seed(7), dtype=dtype,
                          return_trajectory=True, callback=lambda info: seen.append((info["i"], info["t"])))
    assert out.nfe == net.calls == 1000
    # the trajectory is x_T then one state per diffusers step (the last one is the x̂_0 denoise)
    _assert_trajectories_match(out.trajectory, theirs, rel=1e-10 if float64 else 1e-4)
    assert torch.equal(out.x, out.trajectory[-1])
    assert len(seen) == 1000 and seen[-1][1] == 0.0


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("num_steps", [50, 20])
def test_ddim_reproduces_diffusers_ddim(eta, num_steps):
    sde = sd.DiscreteVPSDE.linear()
    net = EpsNet(48, sde.alphas_cumprod)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, prediction_type="epsilon",
                          set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    sched.set_timesteps(num_steps)
    theirs = _diffusers_loop(sched, net, seed=8, dtype=torch.float32, step_kwargs={"eta": eta})

    grid = (sched.timesteps.to(torch.float64) + 1) / 1000  # diffusers' step i sits at t = (i + 1)/N
    model = sd.ScoreModel(net, sde, prediction="eps", time_input="index")
    net.calls = 0
    out = S.DDIM(steps=num_steps, eta=eta, grid=grid).sample(
        model, shape=SHAPE, generator=torch.Generator().manual_seed(8), return_trajectory=True)
    assert out.nfe == net.calls == num_steps
    _assert_trajectories_match(out.trajectory, theirs, rel=1e-4)


# ============================================================================ (b) torchsde adapter vs native EM


def test_torchsde_euler_matches_euler_maruyama_on_gmm():
    floor = noise_floor()
    model = reference_gmm().score_model(sd.VPSDE())
    native = S.EulerMaruyama(steps=200).sample(model, shape=(N_SAMPLES, 2), generator=torch.Generator().manual_seed(41), dtype=torch.float64)
    adapter = S.TorchSDE("euler", steps=200).sample(model, shape=(N_SAMPLES, 2), generator=torch.Generator().manual_seed(42), dtype=torch.float64)
    assert torch.equal(native.times, adapter.times)
    stat = mmd_stat(native.x, adapter.x)
    assert stat < floor.threshold, f"TorchSDE(euler) vs EulerMaruyama: MMD {stat:.3e}. {floor.describe()}"


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_torchsde_euler_matches_euler_maruyama_moments(sde_name):
    """12 steps: EM is visibly biased; the adapter must carry the *same* bias (same discretisation)."""
    sde = {"vp": sd.VPSDE(), "ve": sd.VESDE(sigma_min=0.01, sigma_max=50.0)}[sde_name]
    mu, s2, paths, steps = 1.0, 0.25, 100_000, 12
    gauss = GaussianMixture([[mu]], [s2])
    model = gauss.score_model(sde)
    kwargs = dict(shape=(paths, 1), dtype=torch.float64)
    native = S.EulerMaruyama(steps=steps, denoise=False).sample(model, generator=torch.Generator().manual_seed(51), **kwargs).x
    adapter = S.TorchSDE("euler", steps=steps, denoise=False).sample(model, generator=torch.Generator().manual_seed(52), **kwargs).x

    alpha, sigma = float(sde.alpha(sde.eps)), float(sde.sigma(sde.eps))
    v_exact = alpha**2 * s2 + sigma**2
    v = float(native.var())
    se_dmean = math.sqrt(2 * v / paths)
    se_dvar = v * math.sqrt(4 / (paths - 1))
    assert abs(float(native.mean() - adapter.mean())) < 4.5 * se_dmean
    assert abs(float(native.var() - adapter.var())) < 4.5 * se_dvar
    # power: the shared bias is far above what the comparison can resolve
    assert abs(v - v_exact) > 10 * se_dvar, f"EM variance bias {v - v_exact:.2e} too small to make the comparison meaningful"


# ============================================================================ (c) adaptive ODE vs closed form


@pytest.mark.parametrize("sde_name", ["vp", "ve", "subvp", "cosine"])
def test_dopri5_matches_exact_flow(sde_name):
    sde = {"vp": sd.VPSDE(), "ve": sd.VESDE(sigma_min=0.01, sigma_max=50.0), "subvp": sd.SubVPSDE(), "cosine": sd.CosineVPSDE()}[sde_name]
    gauss = GaussianMixture([[0.5, -0.3]], [[[0.5, 0.2], [0.2, 0.3]]])
    x_T = sde.prior_sample((256, 2), torch.Generator().manual_seed(61), dtype=torch.float64)
    out = S.ProbabilityFlowODE(method="dopri5", rtol=1e-7, atol=1e-7, denoise=False).sample(gauss.score_model(sde), x_T=x_T)
    exact = gauss.flow(x_T, sde.T, sde.eps, sde)
    err = float((out.x - exact).abs().max())
    assert err < 1e-4, f"dopri5 (rtol=atol=1e-7) vs exact flow: max abs error {err:.2e}"
