"""Agreement with peer implementations driven by the same exact model, from the same x_T.

k-diffusion works in σ̃ = σ/α on x̃ = x/α with the denoiser D(x̃, σ̃) = x̂_0(α(t) x̃, t) at
t = t(λ = −log σ̃) (``sde_diffusion.bench.peers.KarrasDenoiser``); it starts from x̃_T = x_T/α_T and its
last step to σ̃ = 0 is our final Tweedie denoise. diffusers works on DDPM's integer timesteps: step k is our
t = (k + 1)/N on ``DiscreteVPSDE.linear()``.

What is exact (float64, ≤ 1e-10) and what is not, and why:

* k-diffusion ``dpmpp_2m`` ≡ DPMSolver(2, midpoint, x0); ``dpmpp_2m_sde`` (η = 1, our noise fed to its
  ``noise_sampler``) ≡ DPMSolver(2, η = 1) for both its "midpoint" and "heun" (= our "taylor") variants;
  ``heun`` ≡ Heun, with and without churn (the churn noise aligned: k-diffusion draws one normal every step,
  we draw one per churning step).
* k-diffusion ``dpmpp_3m_sde`` (and diffusers' 3M, which has the same formula) weights the second divided
  difference D2 = h²[m0, m1, m2] by h φ₃(−h) — half of the Taylor coefficient h³ φ₃(−h) · p'' = 2 h φ₃(−h) D2.
  Their "3M" is therefore only second order (measured ≈ 2.0 on Gaussian data, where ours is ≥ 3); with
  that one coefficient halved, ours reproduces k-diffusion exactly (tested), so nothing else differs.
* diffusers ``UniPCMultistepScheduler`` (bh2, x0) ≡ UniPC once its float32 σ table is replaced by the
  float64 one (its own float32 schedule agrees to ~1e-5). With ``final_sigmas_type="zero"`` diffusers
  lowers the order in the last two steps counting its denoise step as one (ours follows DPM-Solver's
  reference: fewer than 15 steps, the final denoise not counted); with that rule swapped in (a test-local
  subclass) the two agree exactly.
* diffusers ``DPMSolverMultistepScheduler`` casts the state to float32 inside ``step``; it agrees with
  DPMSolver (2M both solver types; 3M with the halved D2) to float32 precision.
"""
from __future__ import annotations

import math

import pytest
import torch

from sde_diffusion.bench import peers
from sde_diffusion.samplers import DPMSolver, Heun, UniPC, dpm_solver
from sde_diffusion.samplers.exponential import derivatives
from sde_diffusion.samplers.grids import make_grid

from _solvers import F64, anisotropic_gaussian, fitted_order, prior_draw, sdes

pytestmark = [
    # diffusers' numpy-2 ``__array__`` deprecation notice, not ours
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

SDES = sdes()
GM = anisotropic_gaussian()
BATCH = 16

kd = peers.load_k_diffusion_sampling()
needs_kd = pytest.mark.skipif(kd is None, reason="k-diffusion not installed (pip install --no-deps k-diffusion==0.1.1.post1 tqdm)")


def karras_sigmas(sde, n: int, rho: float = 7.0) -> torch.Tensor:
    """n + 1 Karras σ̃ from σ̃(T) to σ̃(eps) in float64 (EDM eq. 5), written here independently."""
    lam = sde.log_snr(torch.tensor([sde.T, sde.eps], dtype=F64))
    s_max, s_min = torch.exp(-lam).tolist()
    ramp = torch.linspace(0, 1, n + 1, dtype=F64)
    return (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho


def grid_of(sde, sigmas: torch.Tensor) -> torch.Tensor:
    """Our explicit time grid for a σ̃ schedule: t_i = t(λ = −log σ̃_i)."""
    return sde.t_of_log_snr(-torch.log(sigmas))


def with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def run_kd(name, sde, x_T, sigmas, **kw):
    out, nfe = peers.run_k_diffusion(name, GM.score_model(sde), x_T, sigmas=with_zero(sigmas), **kw)
    return out, nfe


def noises(seed: int, shape, count: int):
    """The normals our samplers draw from ``Generator().manual_seed(seed)``, one per stochastic step."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=F64) for _ in range(count)]


def feeder(draws):
    it = iter(draws)
    return lambda sigma, sigma_next: next(it)


def halved_second_derivative(lams, values):
    """k-diffusion's / diffusers' 3M: the second-derivative term at half its Taylor weight."""
    terms = derivatives(lams, values)
    if len(terms) == 3:
        terms[2] = 0.5 * terms[2]
    return terms


def assert_exact(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------
# k-diffusion
# --------------------------------------------------------------------------------------------
@needs_kd
@pytest.mark.parametrize("steps", [6, 25])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_kdiffusion_dpmpp_2m(sde_name, steps):
    sde = SDES[sde_name]
    x_T = prior_draw(sde, BATCH, GM.dim)
    sigmas = karras_sigmas(sde, steps)
    theirs, their_nfe = run_kd("dpmpp_2m", sde, x_T, sigmas)
    out = DPMSolver(steps=steps, order=2, solver_type="midpoint", prediction="x0", lower_order_final=False,
                    grid=grid_of(sde, sigmas)).sample(GM.score_model(sde), x_T=x_T)
    assert out.nfe == their_nfe == steps + 1
    assert_exact(out.x, theirs)


@needs_kd
@pytest.mark.parametrize("solver_type, their_type", [("midpoint", "midpoint"), ("taylor", "heun")])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_kdiffusion_dpmpp_2m_sde(sde_name, solver_type, their_type):
    """η = 1 with the same normals: ours from the generator, k-diffusion's through ``noise_sampler``."""
    sde, steps = SDES[sde_name], 12
    x_T = prior_draw(sde, BATCH, GM.dim)
    sigmas = karras_sigmas(sde, steps)
    theirs, _ = run_kd("dpmpp_2m_sde", sde, x_T, sigmas, eta=1.0, solver_type=their_type,
                       noise_sampler=feeder(noises(9, x_T.shape, steps)))
    out = DPMSolver(steps=steps, order=2, solver_type=solver_type, eta=1.0, lower_order_final=False,
                    grid=grid_of(sde, sigmas)).sample(GM.score_model(sde), x_T=x_T, generator=torch.Generator().manual_seed(9))
    assert_exact(out.x, theirs)


@needs_kd
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_kdiffusion_dpmpp_3m_equals_ours_with_halved_d2(sde_name, eta, monkeypatch):
    """k-diffusion's 3M (first step order 1, second order 2, its last step to σ̃ = 0 the denoise — our
    ``lower_order_final=False``) is ours with the second-derivative weight halved, and nothing else."""
    sde, steps = SDES[sde_name], 15
    x_T = prior_draw(sde, BATCH, GM.dim)
    sigmas = karras_sigmas(sde, steps)
    kw = dict(noise_sampler=feeder(noises(4, x_T.shape, steps))) if eta else {}
    theirs, their_nfe = run_kd("dpmpp_3m_sde", sde, x_T, sigmas, eta=eta, **kw)
    sampler = DPMSolver(steps=steps, order=3, eta=eta, lower_order_final=False, grid=grid_of(sde, sigmas))
    model = GM.score_model(sde)
    exact_ours = sampler.sample(model, x_T=x_T, generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(dpm_solver, "derivatives", halved_second_derivative)
    halved = sampler.sample(model, x_T=x_T, generator=torch.Generator().manual_seed(4))
    assert halved.nfe == their_nfe == steps + 1
    assert_exact(halved.x, theirs)
    assert (exact_ours.x - theirs).abs().max() > 1e-6  # the unpatched solver is a different (better) method


@needs_kd
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_kdiffusion_3m_is_second_order_ours_third(sde_name):
    """The consequence of the halved weight: against the exact PF-ODE solution (then the same denoise),
    k-diffusion's 3M converges at order ≈ 2 and ours at ≥ 3 (Gaussian data, λ-uniform σ̃)."""
    sde = SDES[sde_name]
    model = GM.score_model(sde)
    x_T = prior_draw(sde, BATCH, GM.dim)
    exact = model.x0(GM.flow(x_T, sde.T, sde.eps, sde), sde.eps)
    steps = (20, 40, 80)
    ours, theirs = [], []
    for n in steps:
        ts = make_grid("log_snr", sde, n)
        sigmas = torch.exp(-sde.log_snr(ts))
        theirs.append(float((run_kd("dpmpp_3m_sde", sde, x_T, sigmas, eta=0.0)[0] - exact).pow(2).mean().sqrt()))
        out = DPMSolver(steps=n, order=3, lower_order_final=False, grid=ts).sample(model, x_T=x_T)
        ours.append(float((out.x - exact).pow(2).mean().sqrt()))
    assert 1.7 <= fitted_order(steps, theirs) <= 2.5, theirs
    assert fitted_order(steps, ours) >= 2.7, ours
    assert ours[-1] < 0.05 * theirs[-1]


@needs_kd
@pytest.mark.parametrize("sde_name", list(SDES))
def test_kdiffusion_heun(sde_name):
    sde, steps = SDES[sde_name], 10
    x_T = prior_draw(sde, BATCH, GM.dim)
    ts = make_grid("karras", sde, steps)
    sigmas = torch.exp(-sde.log_snr(ts))
    theirs, their_nfe = run_kd("heun", sde, x_T, sigmas)
    out = Heun(steps=steps, grid=ts).sample(GM.score_model(sde), x_T=x_T)
    assert out.nfe == their_nfe == 2 * steps + 1
    assert_exact(out.x, theirs)


@needs_kd
@pytest.mark.parametrize("sde_name", list(SDES))
def test_kdiffusion_heun_with_churn(sde_name):
    """Churn on steps 1 … N−1 (S_tmax below σ̃_0, S_tmin above σ̃_N: our σ̂ is capped at σ̃(T) and our final
    step is a plain denoise, so the first and the last step do not churn here). k-diffusion draws a normal at
    every step, we only at churning steps: our generator is advanced by one draw so that our k-th churn
    noise is its (k+1)-th. S_churn is large enough that γ = √2 − 1 for both (they divide by N + 1, we by N)."""
    sde, steps, seed = SDES[sde_name], 10, 21
    x_T = prior_draw(sde, BATCH, GM.dim)
    ts = make_grid("karras", sde, steps)
    sig = torch.exp(-sde.log_snr(ts)).tolist()
    s_tmax, s_tmin = math.sqrt(sig[0] * sig[1]), math.sqrt(sig[-1] * sig[-2])
    churn = dict(s_churn=100.0, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=1.003)
    theirs, _ = peers.run_k_diffusion("heun", GM.score_model(sde), x_T, sigmas=with_zero(torch.tensor(sig, dtype=F64)),
                                      seed=seed, **churn)
    gen = torch.Generator().manual_seed(seed)
    torch.randn(x_T.shape, generator=gen, dtype=F64)  # k-diffusion's draw at step 0 (no churn there)
    out = Heun(steps=steps, grid=ts, **churn).sample(GM.score_model(sde), x_T=x_T, generator=gen)
    assert_exact(out.x, theirs)
    no_churn = Heun(steps=steps, grid=ts).sample(GM.score_model(sde), x_T=x_T)
    assert (no_churn.x - out.x).abs().max() > 1e-3  # the churn did something


# --------------------------------------------------------------------------------------------
# diffusers (DDPM's discrete schedule)
# --------------------------------------------------------------------------------------------
try:
    import diffusers
except ImportError:  # pragma: no cover - diffusers is a test dependency
    diffusers = None
needs_diffusers = pytest.mark.skipif(diffusers is None, reason="diffusers not installed")
DDPM_SDE = SDES["ddpm"]
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="sample")


def run_diffusers(scheduler, x_T, steps, float64_sigmas=True):
    """Drive a diffusers multistep scheduler with our exact x̂_0 (prediction_type="sample")."""
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.tolist()
    times = [(k + 1) / DDPM_SDE.num_steps for k in timesteps]
    if float64_sigmas:
        last = [DDPM_SDE.eps] if float(scheduler.sigmas[-1]) > 0 else []
        sig = torch.exp(-DDPM_SDE.log_snr(torch.tensor(times + last, dtype=F64)))
        scheduler.sigmas = torch.cat([sig, sig.new_zeros(1)]) if not last else sig
    model = GM.score_model(DDPM_SDE)
    x = x_T
    for k, t in zip(timesteps, times):
        x = scheduler.step(model.x0(x, t), k, x).prev_sample
    return x, torch.tensor(times, dtype=F64)


def unipc_scheduler(**kw):
    return diffusers.UniPCMultistepScheduler(solver_order=3, predict_x0=True, solver_type="bh2", **SCHEDULE, **kw)


@needs_diffusers
@pytest.mark.parametrize("steps", [8, 20])
def test_diffusers_unipc_exact(steps):
    """``final_sigmas_type="sigma_min"``: diffusers' last step lands on timestep 0 (our eps = 1/N), undenoised."""
    x_T = prior_draw(DDPM_SDE, BATCH, GM.dim)
    theirs, times = run_diffusers(unipc_scheduler(lower_order_final=False, final_sigmas_type="sigma_min"), x_T, steps)
    grid = torch.cat([times, torch.tensor([DDPM_SDE.eps], dtype=F64)])
    out = UniPC(steps=steps, order=3, lower_order_final=False, grid=grid, denoise=False).sample(GM.score_model(DDPM_SDE), x_T=x_T)
    assert out.nfe == steps
    assert_exact(out.x, theirs)
    # diffusers' own float32 σ table: the same up to float32 rounding of the schedule
    theirs32, _ = run_diffusers(unipc_scheduler(lower_order_final=False, final_sigmas_type="sigma_min"), x_T, steps,
                                float64_sigmas=False)
    torch.testing.assert_close(out.x, theirs32, rtol=0, atol=1e-4)


class UniPCCountingTheDenoise(UniPC):
    """UniPC with diffusers' lower-order-final rule: the final denoise counts as the last step."""

    def _step_order(self, i: int, steps: int) -> int:
        return min(self.order, i + 1, steps + 1 - i)


@needs_diffusers
@pytest.mark.parametrize("steps", [6, 20])
def test_diffusers_unipc_final_zero(steps):
    """``final_sigmas_type="zero"`` + ``lower_order_final=True``: diffusers lowers the order of its last two
    steps counting its final step to σ = 0 (the denoise) as one, at any number of steps; ours follows
    DPM-Solver's reference (only below 15 steps, the denoise not counted). With diffusers' rule swapped in,
    the two agree exactly — so that rule is the only difference — and our default differs from it."""
    model = GM.score_model(DDPM_SDE)
    x_T = prior_draw(DDPM_SDE, BATCH, GM.dim)
    theirs, times = run_diffusers(unipc_scheduler(lower_order_final=True, final_sigmas_type="zero"), x_T, steps)
    same_rule = UniPCCountingTheDenoise(steps=steps - 1, order=3, grid=times).sample(model, x_T=x_T)
    assert same_rule.nfe == steps
    assert_exact(same_rule.x, theirs)
    ours = UniPC(steps=steps - 1, order=3, grid=times).sample(model, x_T=x_T)
    assert (ours.x - theirs).abs().max() > 1e-6


@needs_diffusers
@pytest.mark.parametrize("order, solver_type, their_type", [(2, "midpoint", "midpoint"), (2, "taylor", "heun"), (3, "taylor", "midpoint")])
def test_diffusers_dpm_solver_multistep(order, solver_type, their_type, monkeypatch):
    """diffusers computes each step in float32 (``sample.to(torch.float32)``): agreement to float32 precision.
    Its 3M carries the same halved D2 weight as k-diffusion's."""
    steps = 12
    x_T = prior_draw(DDPM_SDE, BATCH, GM.dim)
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=order, algorithm_type="dpmsolver++", solver_type=their_type,
                                                      lower_order_final=False, final_sigmas_type="sigma_min", **SCHEDULE)
    theirs, times = run_diffusers(scheduler, x_T, steps)
    if order == 3:
        monkeypatch.setattr(dpm_solver, "derivatives", halved_second_derivative)
    grid = torch.cat([times, torch.tensor([DDPM_SDE.eps], dtype=F64)])
    out = DPMSolver(steps=steps, order=order, solver_type=solver_type, lower_order_final=False, grid=grid,
                    denoise=False).sample(GM.score_model(DDPM_SDE), x_T=x_T)
    torch.testing.assert_close(out.x, theirs, rtol=0, atol=2e-5)
