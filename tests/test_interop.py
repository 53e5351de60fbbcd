"""diffusers and k-diffusion models as ScoreModels, and ours as k-diffusion denoisers.

(a) A randomly initialised tiny diffusers ``UNet2DModel`` under ``ScoreModel.from_diffusers`` reproduces diffusers'
    own sampling loops (and the ``DDIMPipeline`` / ``DDPMPipeline`` outputs) on diffusers' timestep grid
    t = (k + 1)/N, same generator seed, to float32 round-off (relative 1e-5; measured ~1e-6):
    DDIM (η = 0, 1; ε, v and x_0 prediction) ≡ ``DDIMScheduler(set_alpha_to_one=True)`` — its last step to
    ᾱ = 1 is our final denoise; DPM-Solver++ 2M (midpoint) ≡ ``DPMSolverMultistepScheduler`` and UniPC(bh2,
    order 2) ≡ ``UniPCMultistepScheduler`` with their defaults (``final_sigmas_type="zero"``: the final step to
    σ = 0 is our denoise). At 10 steps diffusers' ``lower_order_final`` lowers only that final step (for 2M /
    order-2 UniPC), i.e. our ``lower_order_final=False``; our default (which also lowers the last walked step)
    is shown to differ by ≫ the tolerance.
(b) ``to_kdiffusion``: k-diffusion's ``sample_euler`` (Euler in σ̃ ≡ DDIM η = 0: x̃_s = x̂_0 + σ̃_s (x̃_t − x̂_0)/σ̃_t),
    ``sample_heun`` and ``sample_dpmpp_2m`` on our exact-GMM model equal our DDIM / Heun / DPMSolver on the
    same grid to 1e-10 (float64). ``from_kdiffusion`` inverts it (1e-6) and matches closed-form Gaussian scores.
"""
from __future__ import annotations

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion.bench import peers
from sde_diffusion.interop import (DiffusersNet, KDiffusionDenoiser, diffusers_betas, diffusers_grid, from_diffusers,
                                   from_kdiffusion, to_kdiffusion)
from sde_diffusion.samplers.grids import make_grid

from _solvers import F64, anisotropic_gaussian, prior_draw, sdes

diffusers = pytest.importorskip("diffusers")

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]

SHAPE = (2, 1, 8, 8)
STEPS = 10
REL = 1e-5  # float32 round-off, relative to the largest |x|


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                                norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"))
    return net.eval().requires_grad_(False)


def diffusers_loop(unet, scheduler, seed: int, **step_kwargs) -> torch.Tensor:
    """The loop of diffusers' unconditional pipelines: x_T ~ randn(generator), then unet → scheduler.step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    scheduler.set_timesteps(STEPS)
    if step_kwargs.get("eta"):
        step_kwargs["generator"] = g
    for k in scheduler.timesteps:
        x = scheduler.step(unet(x, k).sample, k, x, **step_kwargs).prev_sample
    return x


def assert_round_off(ours: torch.Tensor, theirs: torch.Tensor, rel: float = REL) -> float:
    scale = max(1.0, float(theirs.abs().max()))
    err = float((ours - theirs).abs().max())
    assert err <= rel * scale, f"max |ours - diffusers| = {err:.3e} (scale {scale:.3g})"
    return err / scale


def ddim_scheduler(prediction_type: str):
    return diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, prediction_type=prediction_type)


# ============================================================================ (a) diffusers


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_reproduces_diffusers(unet, prediction_type, eta):
    scheduler = ddim_scheduler(prediction_type)
    theirs = diffusers_loop(unet, scheduler, seed=3, eta=eta)
    model = sd.ScoreModel.from_diffusers(unet, scheduler)
    assert model.prediction == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction_type]
    out = S.DDIM(eta=eta, grid=diffusers_grid(scheduler)).sample(model, shape=SHAPE, generator=torch.Generator().manual_seed(3))
    assert out.nfe == STEPS
    assert_round_off(out.x, theirs)


MULTISTEP = {
    "dpmpp_2m": (lambda **kw: diffusers.DPMSolverMultistepScheduler(solver_order=2, solver_type="midpoint", **kw),
                 lambda grid, lof: S.DPMSolver(order=2, solver_type="midpoint", grid=grid, lower_order_final=lof)),
    "unipc": (lambda **kw: diffusers.UniPCMultistepScheduler(solver_order=2, solver_type="bh2", **kw),
              lambda grid, lof: S.UniPC(order=2, variant="bh2", grid=grid, lower_order_final=lof)),
}


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample", "epsilon"])
@pytest.mark.parametrize("name", list(MULTISTEP))
def test_multistep_reproduces_diffusers(unet, name, prediction_type):
    make_scheduler, make_ours = MULTISTEP[name]
    scheduler = make_scheduler(prediction_type=prediction_type)
    assert scheduler.config.final_sigmas_type == "zero" and scheduler.config.lower_order_final
    theirs = diffusers_loop(unet, scheduler, seed=4)
    model = from_diffusers(unet, scheduler)
    grid = diffusers_grid(scheduler)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    out = make_ours(grid, False).sample(model, x_T=x_T)
    assert out.nfe == STEPS
    assert_round_off(out.x, theirs)
    if prediction_type == "v_prediction":  # the lower-order rule matters, and the test can see it
        default = make_ours(grid, True).sample(model, x_T=x_T)
        assert float((default.x - theirs).abs().max()) > 1e3 * REL * max(1.0, float(theirs.abs().max()))


def test_multistep_sigma_min_ending(unet):
    """``final_sigmas_type="sigma_min"``: diffusers ends on timestep 0 undenoised = our grid with t = 1/N, denoise=False."""
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=2, solver_type="midpoint", final_sigmas_type="sigma_min",
                                                      lower_order_final=False, prediction_type="v_prediction")
    theirs = diffusers_loop(unet, scheduler, seed=5)
    grid = diffusers_grid(scheduler, final="sigma_min")
    assert float(grid[-1]) == 1 / 1000
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    out = S.DPMSolver(order=2, solver_type="midpoint", grid=grid, lower_order_final=False, denoise=False).sample(
        from_diffusers(unet, scheduler), x_T=x_T)
    assert out.nfe == STEPS
    assert_round_off(out.x, theirs)


def test_pipelines_outputs(unet):
    """The pipelines themselves (``output_type="pt"``: (x/2 + 1/2) clamped to [0, 1]): DDIMPipeline η = 1, and
    DDPMPipeline, which calls any scheduler, with DPM-Solver++ 2M."""
    ddim = ddim_scheduler("v_prediction")
    image = diffusers.DDIMPipeline(unet, ddim)(batch_size=2, generator=torch.Generator().manual_seed(6), eta=1.0,
                                               num_inference_steps=STEPS, output_type="pt").images
    ddim.set_timesteps(STEPS)  # the pipeline steps its own copy (DDIMScheduler.from_config)
    ours = S.DDIM(eta=1.0, grid=diffusers_grid(ddim)).sample(from_diffusers(unet, ddim), shape=SHAPE,
                                                              generator=torch.Generator().manual_seed(6)).x
    assert 0.05 < float(((ours > -1) & (ours < 1)).float().mean())  # not all clamped away
    assert_round_off((ours / 2 + 0.5).clamp(0, 1), image)

    dpm = diffusers.DPMSolverMultistepScheduler(prediction_type="sample")
    image = diffusers.DDPMPipeline(unet, dpm)(batch_size=2, generator=torch.Generator().manual_seed(7),
                                              num_inference_steps=STEPS, output_type="pt").images
    dpm.set_timesteps(STEPS)
    ours = S.DPMSolver(order=2, solver_type="midpoint", grid=diffusers_grid(dpm), lower_order_final=False).sample(
        from_diffusers(unet, dpm), shape=SHAPE, generator=torch.Generator().manual_seed(7)).x
    assert_round_off((ours / 2 + 0.5).clamp(0, 1), image)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_betas_match_diffusers(schedule):
    """Our float64 rebuild of each schedule against diffusers' float32 table; ᾱ against its cumulative product."""
    scheduler = diffusers.DDPMScheduler(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012)
    betas = diffusers_betas(scheduler)
    assert betas.dtype == F64
    torch.testing.assert_close(betas.float(), scheduler.betas, rtol=1e-5, atol=1e-8)
    sde = from_diffusers(torch.nn.Identity(), scheduler).sde
    torch.testing.assert_close(sde.alphas_cumprod.float(), scheduler.alphas_cumprod, rtol=1e-4, atol=1e-7)
    trained = diffusers_betas({"num_train_timesteps": 1000, "trained_betas": scheduler.betas.tolist()})
    torch.testing.assert_close(trained, scheduler.betas.double())


def test_net_output_unwrapping(unet):
    x, k = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8)), torch.tensor([3, 700])
    expected = unet(x, k).sample
    tuple_net = lambda x, t: unet(x, t, return_dict=False)  # noqa: E731
    for net in (unet, tuple_net, lambda x, t: unet(x, t).sample):
        torch.testing.assert_close(DiffusersNet(net)(x, k), expected, rtol=0, atol=0)
    with pytest.raises(TypeError, match="unet returned"):
        DiffusersNet(lambda x, t: {"x": x})(x, k)


@pytest.mark.parametrize("config, match", [
    ({"num_train_timesteps": 1000, "prediction_type": "flow"}, "prediction_type"),
    ({"num_train_timesteps": 1000, "beta_schedule": "sigmoid"}, "beta_schedule"),
    ({"num_train_timesteps": 1000, "rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}, "trained_betas"),
    ({"num_train_timesteps": 1.5}, "num_train_timesteps"),
])
def test_from_diffusers_rejects_bad_configs(config, match):
    with pytest.raises(ValueError, match=match):
        from_diffusers(torch.nn.Identity(), config)
    with pytest.raises(TypeError, match="scheduler"):
        from_diffusers(torch.nn.Identity(), 3)


def test_diffusers_grid_needs_timesteps():
    with pytest.raises(ValueError, match="set_timesteps"):
        diffusers_grid({"num_train_timesteps": 1000})
    scheduler = ddim_scheduler("epsilon")
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="final"):
        diffusers_grid(scheduler, final="zero")


# ============================================================================ (b) k-diffusion

kd = peers.load_k_diffusion_sampling()
needs_kd = pytest.mark.skipif(kd is None, reason="k-diffusion not installed (pip install --no-deps k-diffusion==0.1.1.post1 tqdm)")
SDES = sdes()
GM = anisotropic_gaussian()

KD_PAIRS = {
    "euler": lambda ts: S.DDIM(eta=0.0, grid=ts),
    "heun": lambda ts: S.Heun(grid=ts),
    "dpmpp_2m": lambda ts: S.DPMSolver(order=2, solver_type="midpoint", prediction="x0", lower_order_final=False, grid=ts),
}


@needs_kd
@pytest.mark.parametrize("sampler", list(KD_PAIRS))
@pytest.mark.parametrize("sde_name", list(SDES))
def test_kdiffusion_samplers_run_our_model(sde_name, sampler):
    sde, steps = SDES[sde_name], 8
    model = GM.score_model(sde)
    denoiser = to_kdiffusion(model)
    x_T = prior_draw(sde, 16, GM.dim)
    sigmas = denoiser.get_sigmas(steps, "karras")
    theirs = getattr(kd, f"sample_{sampler}")(denoiser, denoiser.scale_prior(x_T), sigmas, disable=True)
    out = KD_PAIRS[sampler](make_grid("karras", sde, steps)).sample(model, x_T=x_T)
    torch.testing.assert_close(out.x, theirs, rtol=1e-10, atol=1e-10)


def test_denoiser_sigmas():
    ddpm = SDES["ddpm"]
    denoiser = to_kdiffusion(GM.score_model(ddpm))
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)
    torch.testing.assert_close(denoiser.sigmas, ((1 - abar) / abar).sqrt())  # k-diffusion's DiscreteSchedule.sigmas
    assert denoiser.sigma_min == pytest.approx(float(denoiser.sigmas[0]), rel=1e-12)
    assert denoiser.sigma_max == pytest.approx(float(denoiser.sigmas[-1]), rel=1e-12)
    ve = to_kdiffusion(GM.score_model(sd.VESDE(sigma_min=0.01, sigma_max=50.0)))
    assert ve.sigmas is None
    sig = ve.get_sigmas(5)
    assert sig[0] == pytest.approx(50.0) and sig[-2] == pytest.approx(0.01 * 5000 ** 1e-5) and sig[-1] == 0
    with pytest.raises(ValueError, match="sigma"):
        ve(torch.zeros(2, 3, dtype=F64), torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="sigma"):
        ve(torch.zeros(2, 3, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(TypeError, match="ScoreModel"):
        KDiffusionDenoiser(lambda x, s: x)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_from_kdiffusion_inverts_to_kdiffusion(sde_name):
    sde = SDES[sde_name]
    model = GM.score_model(sde)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(32, GM.dim, generator=g, dtype=F64) * 2
    t = sde.eps + (sde.T - sde.eps) * torch.rand(32, generator=g, dtype=F64)
    back = sd.ScoreModel.from_kdiffusion(to_kdiffusion(model), sde=sde)
    torch.testing.assert_close(back.x0(x, t), model.x0(x, t), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(back.score(x, t), model.score(x, t), rtol=1e-6, atol=1e-6)
    # the default SDE: VE on the denoiser's σ̃ range; the same noise level is t' = log(σ̃/σ̃_min)/log(σ̃_max/σ̃_min), x̃ = x/α
    ve = from_kdiffusion(to_kdiffusion(model))
    s_min, s_max = float(sde.sigma(sde.eps) / sde.alpha(sde.eps)), float(sde.sigma(sde.T) / sde.alpha(sde.T))
    assert isinstance(ve.sde, sd.VESDE) and (ve.sde.sigma_min, ve.sde.sigma_max) == pytest.approx((s_min, s_max), rel=1e-12)
    sigma_tilde = sde.sigma(t) / sde.alpha(t)
    t_ve = torch.log(sigma_tilde / s_min) / math.log(s_max / s_min)
    torch.testing.assert_close(ve.x0(x / sde.alpha(t)[:, None], t_ve), model.x0(x, t), rtol=1e-6, atol=1e-6)


def test_from_kdiffusion_gaussian_closed_form():
    """D(x̃, σ̃) = s² x̃/(s² + σ̃²) is E[x_0 | x̃] for x_0 ~ N(0, s² I): the score must be −x/(α² s² + σ²)."""
    s2 = 0.3
    denoiser = lambda x, sigma: s2 * x / (s2 + sigma[:, None] ** 2)  # noqa: E731
    g = torch.Generator().manual_seed(10)
    x = torch.randn(16, 3, generator=g, dtype=F64)
    for sde in (None, sd.VPSDE(), sd.DiscreteVPSDE.linear()):
        model = from_kdiffusion(denoiser, sde)
        if sde is None:
            assert (model.sde.sigma_min, model.sde.sigma_max) == (0.002, 80.0)
        t = torch.linspace(0.05, 0.95, 16, dtype=F64)
        alpha, sigma = model.sde.alpha(t)[:, None], model.sde.sigma(t)[:, None]
        torch.testing.assert_close(model.score(x, t), -x / (alpha**2 * s2 + sigma**2), rtol=1e-10, atol=1e-10)
    with pytest.raises(TypeError, match="denoiser"):
        from_kdiffusion(3)
    with pytest.raises(TypeError, match="sde"):
        from_kdiffusion(denoiser, sde="ve")
    bad = torch.nn.Identity()
    bad.sigma_min, bad.sigma_max = 1.0, 0.5
    with pytest.raises(ValueError, match="sigma_min"):
        from_kdiffusion(bad)
