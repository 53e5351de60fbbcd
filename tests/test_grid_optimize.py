"""Fitted time grids (Xue et al. 2024): held-out gains over the default grids on an exact-score GMM,
the softmax log-SNR parametrisation, the reference flow against the closed-form Gaussian flow, and the cost report."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sde_diffusion as sd
from sde_diffusion.data.gmm import GaussianMixture, eight_gaussians
from sde_diffusion.samplers import DDIM, DPMSolver, UniPC
from sde_diffusion.interop import to_kdiffusion
from sde_diffusion.samplers.grid_klub import KLUB_NODES, klub_terms
from sde_diffusion.samplers.grid_optimize import (
    gits_grid, log_snr_grid, log_snr_parameters, optimize, pathwise_rms, reference_flow,
)
from sde_diffusion.samplers.grids import make_grid

from _solvers import F64, anisotropic_gaussian

SDE = sd.VPSDE(0.1, 20.0, eps=1e-3)
GM = eight_gaussians()
MODEL = GM.score_model(SDE)


@pytest.fixture(scope="module")
def held_out():
    """500 x_T from a generator the calibration never sees, and their reference x̂_0 (DOP853 + denoise)."""
    x_T = SDE.prior_sample((500, 2), torch.Generator().manual_seed(12345), dtype=F64)
    return x_T, reference_flow(MODEL, x_T, denoise=True)[0]


# measured held-out RMS (calibration 256 x_T, 300 Powell evaluations), optimised vs best default grid:
# dpm2M  5: 2.4e-2 vs 1.4e-1 (karras)   10: 9.6e-3 vs 8.4e-2 (uniform)
# unipc3 5: 2.7e-2 vs 1.5e-1 (karras)   10: 6.2e-3 vs 6.3e-2 (log_snr)
@pytest.mark.parametrize("steps", [5, 10])
@pytest.mark.parametrize("name, factory", [
    ("dpm2M", lambda n: DPMSolver(steps=n, order=2)),
    ("unipc3", lambda n: UniPC(steps=n, order=3)),
], ids=["dpm2M", "unipc3"])
def test_optimised_grid_beats_default_grids_on_held_out_x_T(name, factory, steps, held_out):
    x_T, target = held_out
    sampler = factory(steps)
    grid, info = optimize(sampler, MODEL, steps, (2,), generator=torch.Generator().manual_seed(0),
                          n_calibration=256, max_evals=300, return_info=True)
    defaults = {g: pathwise_rms(sampler, MODEL, g, x_T, target)[0] for g in ("uniform", "log_snr", "karras")}
    fitted = pathwise_rms(sampler, MODEL, grid, x_T, target)[0]
    assert fitted < 0.4 * min(defaults.values()), (fitted, defaults)
    assert info.final_rms < 0.4 * info.initial_rms  # on the calibration set too
    # the grid is what the sampler then walks: steps + 1 points, T … eps, decreasing
    assert grid.dtype == F64 and grid.shape == (steps + 1,)
    assert float(grid[0]) == SDE.T and float(grid[-1]) == SDE.eps
    assert bool((grid.diff() < 0).all())
    out = DPMSolver(steps=steps, grid=grid).sample(MODEL, x_T=x_T[:4]) if name == "dpm2M" else None
    if out is not None:
        torch.testing.assert_close(out.times[:-1], grid, rtol=0, atol=0)


# at 20 steps a smooth search (4 Legendre modes, 100 runs) is enough: held-out RMS 4.0e-3 vs 1.9e-2 (log_snr)
def test_smooth_optimised_grid_beats_default_grids_at_20_steps(held_out):
    x_T, target = held_out
    sampler = DPMSolver(steps=20, order=2)
    grid = optimize(sampler, MODEL, 20, (2,), generator=torch.Generator().manual_seed(0), n_calibration=256,
                    max_evals=100, basis=4)
    defaults = {g: pathwise_rms(sampler, MODEL, g, x_T, target)[0] for g in ("uniform", "log_snr", "karras")}
    fitted = pathwise_rms(sampler, MODEL, grid, x_T, target)[0]
    assert fitted < 0.4 * min(defaults.values()), (fitted, defaults)
    assert grid.shape == (21,) and float(grid[0]) == SDE.T and float(grid[-1]) == SDE.eps


# measured held-out RMS, GITS (120 log-SNR candidates, 256 pilot x_T) vs best default grid:
# DDIM 5: 1.2e-1 vs 2.6e-1 (log_snr)   10: 5.7e-2 vs 9.6e-2 (uniform)
@pytest.mark.parametrize("steps", [5, 10])
def test_gits_grid_beats_default_grids_for_ddim_on_held_out_x_T(steps, held_out):
    x_T, target = held_out
    sampler = DDIM(steps=steps)
    grid, info = optimize(sampler, MODEL, steps, (2,), generator=torch.Generator().manual_seed(0),
                          method="gits", return_info=True)
    defaults = {g: pathwise_rms(sampler, MODEL, g, x_T, target)[0] for g in ("uniform", "log_snr", "karras")}
    fitted = pathwise_rms(sampler, MODEL, grid, x_T, target)[0]
    assert fitted < 0.75 * min(defaults.values()), (fitted, defaults)
    assert grid.shape == (steps + 1,) and float(grid[0]) == SDE.T and float(grid[-1]) == SDE.eps
    assert bool((grid.diff() < 0).all())
    assert set(grid.tolist()) <= set(make_grid("log_snr", SDE, 120).tolist())  # a sub-grid of the candidates
    assert info.final_rms < info.initial_rms and info.reference_nfe > 50


def test_gits_dynamic_programme_finds_the_exhaustive_optimum():
    """Against brute force over every 3-step sub-grid of 9 candidates, the DDIM local-error sum written out again."""
    candidates = make_grid("log_snr", SDE, 8)
    x_T = SDE.prior_sample((64, 2), torch.Generator().manual_seed(5), dtype=F64)
    trajectory, _ = reference_flow(MODEL, x_T, False, times=candidates)
    grid, nfe = gits_grid(MODEL, 3, trajectory, candidates)
    assert nfe == 8

    def ddim_error(i: int, j: int) -> float:
        t, s = candidates[i], candidates[j]
        x0 = MODEL.x0(trajectory[i], float(t))
        eps = (trajectory[i] - SDE.alpha(t) * x0) / SDE.sigma(t)
        return float((SDE.alpha(s) * x0 + SDE.sigma(s) * eps - trajectory[j]).pow(2).mean())

    def total(path):
        return sum(ddim_error(a, b) for a, b in zip(path[:-1], path[1:]))

    paths = [(0, *inner, 8) for inner in itertools.combinations(range(1, 8), 2)]
    best = min(paths, key=total)
    torch.testing.assert_close(grid, candidates[list(best)], rtol=0, atol=0)
    assert total(best) < total((0, 3, 6, 8)) and total(best) < total((0, 1, 2, 8))


def test_nelder_mead_search_improves_too():
    grid, info = optimize(DPMSolver(steps=4), MODEL, 4, (2,), generator=torch.Generator().manual_seed(1),
                          n_calibration=64, max_evals=60, search="nelder-mead", return_info=True)
    assert info.final_rms < 0.8 * info.initial_rms and bool((grid.diff() < 0).all())


def test_deterministic_and_cost_report():
    steps, evals = 4, 30
    sampler = UniPC(steps=steps, order=2)
    run = lambda seed: optimize(sampler, MODEL, steps, (2,), generator=torch.Generator().manual_seed(seed),
                                n_calibration=32, max_evals=evals, return_info=True)
    (g1, i1), (g2, _), (g3, _) = run(7), run(7), run(8)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    assert not torch.equal(g1, g3)  # another calibration set gives another grid
    assert i1.evaluations <= evals + 2  # scipy may overshoot maxfev by a line-search bracket
    assert i1.sampler_nfe == i1.evaluations * (steps + 1)  # multistep: one evaluation a step + the denoise
    assert i1.reference_nfe > 50 and i1.nfe == i1.sampler_nfe + i1.reference_nfe and i1.seconds > 0
    # the reported errors are the pathwise RMS on the calibration x_T
    target = reference_flow(MODEL, i1.x_T, denoise=True)[0]
    assert i1.initial_rms == pytest.approx(pathwise_rms(sampler, MODEL, "log_snr", i1.x_T, target)[0], rel=1e-9)
    assert i1.final_rms == pytest.approx(pathwise_rms(sampler, MODEL, g1, i1.x_T, target)[0], rel=1e-9)
    assert i1.final_rms <= i1.initial_rms
    # a user reference replaces the DOP853 solve (and costs nothing here)
    _, i4 = optimize(sampler, MODEL, steps, (2,), generator=torch.Generator().manual_seed(7), n_calibration=32,
                     max_evals=5, reference=lambda x: reference_flow(MODEL, x, True)[0], return_info=True)
    assert i4.reference_nfe == 0 and i4.initial_rms == pytest.approx(i1.initial_rms, rel=1e-9)


def test_reference_flow_matches_closed_form_gaussian_flow():
    gm = anisotropic_gaussian()
    x_T = SDE.prior_sample((16, gm.dim), torch.Generator().manual_seed(3), dtype=F64)
    x, nfe = reference_flow(gm.score_model(SDE), x_T, denoise=False)
    torch.testing.assert_close(x, gm.flow(x_T, SDE.T, SDE.eps, SDE), rtol=0, atol=1e-7)
    assert nfe > 20


def test_zero_parameters_give_the_log_snr_grid_and_round_trip():
    for steps in (1, 5, 17):
        torch.testing.assert_close(log_snr_grid(SDE, np.zeros(steps)), make_grid("log_snr", SDE, steps), rtol=1e-10, atol=0)
    karras = make_grid("karras", SDE, 9)
    torch.testing.assert_close(log_snr_grid(SDE, log_snr_parameters(SDE, karras)), karras, rtol=1e-8, atol=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-6, 6), min_size=1, max_size=20))
def test_every_parameter_vector_gives_a_valid_grid(theta):
    grid = log_snr_grid(SDE, np.array(theta))
    assert grid.shape == (len(theta) + 1,) and float(grid[0]) == SDE.T and float(grid[-1]) == SDE.eps
    assert bool((grid.diff() < 0).all())
    # the λ-steps are the softmax shares of λ_eps − λ_T
    lam = SDE.log_snr(grid)
    shares = torch.softmax(torch.tensor(theta, dtype=F64), 0)
    torch.testing.assert_close(lam.diff() / (lam[-1] - lam[0]), shares, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kwargs, error", [
    ({"sampler": "dpm"}, TypeError),
    ({"model": object()}, TypeError),
    ({"steps": 0}, ValueError),
    ({"n_calibration": 0}, ValueError),
    ({"max_evals": -1}, ValueError),
    ({"method": "xue"}, ValueError),
    ({"search": "bfgs"}, ValueError),
    ({"generator": 3}, TypeError),
    ({"reference": 1.0}, TypeError),
    ({"shape": (0,)}, ValueError),
    ({"init": torch.tensor([1.0, 0.5, 1e-3])}, ValueError),  # 2 steps, not 4
    ({"reference": lambda x: x[:, :1]}, ValueError),
    ({"reference": lambda x: x * float("nan")}, ValueError),
])
def test_bad_arguments_raise(kwargs, error):
    args = {"sampler": UniPC(steps=4), "model": MODEL, "steps": 4, "shape": (2,), "n_calibration": 4, "max_evals": 2}
    args.update(kwargs)
    with pytest.raises(error):
        optimize(**args)


def test_grids_optimize_takes_the_sample_shape_with_the_calibration_batch():
    """sd.samplers.grids.optimize follows the sampler's shape convention: (n_calibration, *sample_shape)."""
    model = sd.data.eight_gaussians().score_model(sd.VPSDE())
    sampler = sd.samplers.DPMSolver(steps=4, order=2)
    a = sd.samplers.grids.optimize(sampler, model, steps=4, shape=(32, 2), generator=torch.Generator().manual_seed(0), max_evals=20)
    from sde_diffusion.samplers.grid_optimize import optimize as fit

    b = fit(sampler, model, 4, (2,), generator=torch.Generator().manual_seed(0), n_calibration=32, max_evals=20)
    assert torch.equal(a, b) and a.shape == (5,)
    with pytest.raises(ValueError, match="n_calibration"):
        sd.samplers.grids.optimize(sampler, model, steps=4, shape=(2,))


# ---------------------------------------------------------------------------------------------
# Align Your Steps: the KLUB estimator against its closed form on Gaussian data, and its minimiser
# ---------------------------------------------------------------------------------------------
GAUSS_C = 0.5  # data N(0, c² I): the VE-equivalent denoiser is D(x̃, s) = a(s) x̃, a(s) = c²/(c² + s²)
GAUSS_DIM = 4
GAUSS = GaussianMixture(torch.zeros(1, GAUSS_DIM, dtype=F64), GAUSS_C**2 * torch.eye(GAUSS_DIM, dtype=F64)[None])


def closed_form_klub(grid: torch.Tensor, c: float = GAUSS_C) -> np.ndarray:
    """Per step, ∫_{σ_{i+1}}^{σ_i} σ⁻³ [(a(σ) − a_i)² (c² + σ²) + a_i² (σ_i² − σ²)] dσ per coordinate (scipy quad),
    the expectation of ‖D(x̃_σ, σ) − D(x̃_{σ_i}, σ_i)‖²/d written out for Gaussian data."""
    from scipy.integrate import quad

    sigma = (-SDE.log_snr(grid.double())).exp().tolist()
    a = lambda s: c**2 / (c**2 + s**2)  # noqa: E731
    out = []
    for hi, lo in zip(sigma[:-1], sigma[1:]):
        f = lambda s: ((a(s) - a(hi)) ** 2 * (c**2 + s**2) + a(hi) ** 2 * (hi**2 - s**2)) / s**3  # noqa: E731
        out.append(quad(f, lo, hi, limit=200, epsabs=0, epsrel=1e-10)[0])
    return np.array(out)


def test_klub_estimate_matches_its_closed_form_on_gaussian_data():
    model = GAUSS.score_model(SDE)
    g = torch.Generator().manual_seed(0)
    x0 = GAUSS.sample(4000, g, dtype=F64)
    noise, bridge = torch.randn(x0.shape, generator=g, dtype=F64), torch.randn(x0.shape, generator=g, dtype=F64)
    for grid in (make_grid("log_snr", SDE, 5), make_grid("karras", SDE, 8)):
        estimate = klub_terms(model, grid, x0, noise, bridge).numpy()
        exact = closed_form_klub(grid)
        np.testing.assert_allclose(estimate, exact, rtol=0.05)  # Monte Carlo over 16,000 coordinates
    # 4 Gauss–Legendre nodes are already converged against 12 on the same draws
    np.testing.assert_allclose(klub_terms(model, grid, x0, noise, bridge, nodes=4).numpy(),
                               klub_terms(model, grid, x0, noise, bridge, nodes=12).numpy(), rtol=1e-3)
    # the denoiser KLUB evaluates, in VE variables, is a(σ̃) x̃ for this data
    log_sigma = torch.tensor([-2.0, 0.0, 1.5], dtype=F64)
    x_tilde = torch.randn(3, GAUSS_DIM, generator=g, dtype=F64)
    a = GAUSS_C**2 / (GAUSS_C**2 + torch.exp(2 * log_sigma))
    torch.testing.assert_close(to_kdiffusion(model)(x_tilde, log_sigma.exp()), a[:, None] * x_tilde, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("steps", [5, 10])
def test_ays_grid_minimises_the_closed_form_klub(steps):
    """The searched grid's exact KLUB is below every default grid's and within a few % of the true minimum
    (Powell on the closed form over the same log-SNR shares)."""
    from scipy.optimize import minimize

    model = GAUSS.score_model(SDE)
    grid, info = optimize(DDIM(steps=steps), model, steps, (GAUSS_DIM,), generator=torch.Generator().manual_seed(0),
                          n_calibration=512, method="ays", max_evals=400, return_info=True)
    assert grid.shape == (steps + 1,) and float(grid[0]) == SDE.T and float(grid[-1]) == SDE.eps
    assert bool((grid.diff() < 0).all())
    fitted = closed_form_klub(grid).sum()
    defaults = {name: closed_form_klub(make_grid(name, SDE, steps)).sum() for name in ("uniform", "log_snr", "karras")}
    assert fitted < 0.9 * min(defaults.values()), (fitted, defaults)
    best = minimize(lambda th: closed_form_klub(log_snr_grid(SDE, th)).sum(), np.zeros(steps), method="Powell",
                    options={"xtol": 1e-4, "ftol": 1e-8, "maxfev": 4000}).fun
    assert best <= fitted < 1.05 * best, (fitted, best)
    assert info.evaluations > 10 and info.sampler_nfe >= info.evaluations * 2 * steps * KLUB_NODES and info.seconds > 0


def test_ays_is_deterministic_for_a_generator_and_uses_the_calibration_draws():
    model = GAUSS.score_model(SDE)
    run = lambda seed: optimize(DDIM(steps=4), model, 4, (GAUSS_DIM,), generator=torch.Generator().manual_seed(seed),
                                n_calibration=64, method="ays", max_evals=40)
    g1, g2, g3 = run(3), run(3), run(4)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    assert not torch.equal(g1, g3)


@pytest.fixture(scope="module")
def mixture_target():
    from sde_diffusion.bench.stochastic import make_target

    return make_target("gmm2d", "eight Gaussians", GM, seed=0, entropy_samples=40_000, energy_samples=16, sde=SDE)


_AYS_GRIDS = {}


def ays_grid(steps: int) -> torch.Tensor:
    """AYS's grid for MODEL at ``steps`` steps (sampler-independent, so shared by the tests below)."""
    if steps not in _AYS_GRIDS:
        _AYS_GRIDS[steps] = optimize(DDIM(steps=steps), MODEL, steps, (2,), generator=torch.Generator().manual_seed(0),
                                     n_calibration=256, method="ays", max_evals=300)
    return _AYS_GRIDS[steps]


# measured ΔH (nats, 20,000 samples, se ≈ 0.01-0.03), AYS grid vs the best default grid:
# ancestral 5: +1.22 vs +2.41 (log_snr)   10: +0.002 vs +0.27 (uniform);  SDE-DPM-Solver++ 2M 5: +0.48 vs +1.20 (karras)
@pytest.mark.parametrize("name, factory, steps", [
    ("ancestral", lambda n, g: DDIM(steps=n, eta=1.0, grid=g), 5),
    ("sde-dpm++2M", lambda n, g: DPMSolver(steps=n, order=2, eta=1.0, grid=g), 5),
    pytest.param("ancestral", lambda n, g: DDIM(steps=n, eta=1.0, grid=g), 10, marks=pytest.mark.slow),
], ids=["ancestral-5", "sde-dpm2M-5", "ancestral-10"])
def test_ays_grid_beats_default_grids_for_stochastic_samplers(name, factory, steps, mixture_target):
    """AYS bounds the KL divergence of the discretised reverse SDE, so its grid is for stochastic samplers: the excess
    cross-entropy of their samples (fresh x_T and noise, not the calibration draws) against the exact density."""
    grid = ays_grid(steps)
    def excess(g) -> float:
        x = factory(steps, g).sample(MODEL, shape=(20_000, 2), generator=torch.Generator().manual_seed(5),
                                     dtype=F64).x
        return abs(mixture_target.score(x, energy=False)["dh"])

    defaults = {g: excess(g) for g in ("uniform", "log_snr", "karras")}
    fitted = excess(grid)
    assert fitted < 0.7 * min(defaults.values()), (fitted, defaults)
