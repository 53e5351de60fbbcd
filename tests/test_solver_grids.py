"""Time grids: the Karras/EDM grid against its formula, and every fixed-step new solver on every grid."""
from __future__ import annotations

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.bench import peers
from sde_diffusion.samplers import DDIM, DDPM, DPMSolver, Heun, UniPC
from sde_diffusion.samplers.grids import karras, make_grid

from _solvers import F64, anisotropic_gaussian, pathwise_rms, prior_draw, sdes, sigma_tilde


ALL_SDES = {**sdes(), "subvp": sd.SubVPSDE(), "cosine": sd.CosineVPSDE()}
GM = anisotropic_gaussian()


def karras_formula(s_max: float, s_min: float, n: int, rho: float) -> torch.Tensor:
    """EDM eq. 5: σ̃_i = (σ̃_max^{1/ρ} + i/n (σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ, i = 0 … n."""
    i = torch.arange(n + 1, dtype=F64)
    return (s_max ** (1 / rho) + i / n * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho


@pytest.mark.parametrize("n", [1, 7, 40])
@pytest.mark.parametrize("sde_name", list(ALL_SDES))
def test_karras_grid_follows_edm_formula(sde_name, n):
    sde = ALL_SDES[sde_name]
    ts = make_grid("karras", sde, n)
    assert ts.dtype == F64 and ts.shape == (n + 1,)
    assert float(ts[0]) == sde.T and float(ts[-1]) == sde.eps  # exact end points
    assert bool((ts[1:] < ts[:-1]).all())
    s_max, s_min = float(sigma_tilde(sde, sde.T)), float(sigma_tilde(sde, sde.eps))
    torch.testing.assert_close(sigma_tilde(sde, ts), karras_formula(s_max, s_min, n, 7.0), rtol=1e-9, atol=0)


@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0, 12.5])
def test_karras_rho(rho):
    sde = sd.VPSDE()
    ts = make_grid(karras(rho), sde, 12)
    s_max, s_min = float(sigma_tilde(sde, sde.T)), float(sigma_tilde(sde, sde.eps))
    torch.testing.assert_close(sigma_tilde(sde, ts), karras_formula(s_max, s_min, 12, rho), rtol=1e-9, atol=0)
    if rho == 1.0:  # ρ = 1: uniform in σ̃
        steps = sigma_tilde(sde, ts).diff()
        torch.testing.assert_close(steps, steps[:1].expand_as(steps), rtol=1e-9, atol=0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            karras(bad)


@pytest.mark.skipif(peers.load_k_diffusion_sampling() is None, reason="k-diffusion not installed")
def test_karras_grid_matches_k_diffusion():
    """k-diffusion's get_sigmas_karras (float32 ramp) gives the same σ̃ to float32 precision."""
    kd = peers.load_k_diffusion_sampling()
    sde = sd.VESDE(sigma_min=0.002, sigma_max=80.0)
    ts = make_grid("karras", sde, 18)
    s_max, s_min = float(sigma_tilde(sde, sde.T)), float(sigma_tilde(sde, sde.eps))  # σ̃(eps) ≠ sigma_min: eps > 0
    theirs = kd.get_sigmas_karras(19, s_min, s_max, rho=7.0)[:-1].double()
    torch.testing.assert_close(sigma_tilde(sde, ts), theirs, rtol=2e-6, atol=0)


def test_other_grids_are_what_they_say():
    sde = sd.VPSDE()
    n = 10
    torch.testing.assert_close(make_grid("uniform", sde, n), torch.linspace(sde.T, sde.eps, n + 1, dtype=F64))
    torch.testing.assert_close(make_grid("quadratic", sde, n).sqrt().diff(), torch.full((n,), (sde.eps**0.5 - 1) / n, dtype=F64))
    lam = sde.log_snr(make_grid("log_snr", sde, n))
    torch.testing.assert_close(lam.diff(), lam.diff()[:1].expand(n), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------
# every fixed-step new solver takes every grid
# --------------------------------------------------------------------------------------------
def _quadratic_fn(sde, steps):
    return make_grid("quadratic", sde, steps)


GRIDS = {
    "uniform": "uniform", "quadratic": "quadratic", "log_snr": "log_snr", "karras": "karras",
    "karras-rho3": karras(3.0), "function": _quadratic_fn,
    "tensor": lambda sde: make_grid("log_snr", sde, 16),  # an explicit tensor, built per SDE
}
#: (id, factory(steps, grid), NFE per step)
SOLVERS = [
    ("ddim", lambda n, g: DDIM(steps=n, grid=g), 1),
    ("ddpm", lambda n, g: DDPM(steps=n, grid=g), 1),
    ("dpm1", lambda n, g: DPMSolver(steps=n, order=1, grid=g), 1),
    ("dpm2M", lambda n, g: DPMSolver(steps=n, order=2, grid=g), 1),
    ("dpm3M-eps", lambda n, g: DPMSolver(steps=n, order=3, prediction="eps", grid=g), 1),
    ("dpm3M-sde", lambda n, g: DPMSolver(steps=n, order=3, eta=1.0, grid=g), 1),
    ("dpm2S", lambda n, g: DPMSolver(steps=n, order=2, multistep=False, grid=g), 2),
    ("dpm3S", lambda n, g: DPMSolver(steps=n, order=3, multistep=False, grid=g), 3),
    ("unipc3", lambda n, g: UniPC(steps=n, order=3, grid=g), 1),
    ("unipc2-bh1", lambda n, g: UniPC(steps=n, order=2, variant="bh1", grid=g), 1),
    ("heun", lambda n, g: Heun(steps=n, grid=g), 2),
    ("heun-churn", lambda n, g: Heun(steps=n, grid=g, s_churn=5.0), 2),
]


@pytest.mark.parametrize("grid_name", list(GRIDS))
@pytest.mark.parametrize("name, factory, per_step", SOLVERS, ids=[s[0] for s in SOLVERS])
def test_every_solver_accepts_every_grid(name, factory, per_step, grid_name):
    sde = sd.VPSDE() if grid_name != "karras-rho3" else sd.VESDE()
    grid = GRIDS[grid_name]
    grid = grid(sde) if grid_name == "tensor" else grid
    steps = 16
    expected = grid if isinstance(grid, torch.Tensor) else make_grid(grid, sde, steps)
    x_T = prior_draw(sde, 8, GM.dim)
    out = factory(steps, grid).sample(GM.score_model(sde), x_T=x_T, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.x).all()
    assert out.nfe == per_step * steps + 1  # + the final denoise
    torch.testing.assert_close(out.times, torch.cat([expected, expected.new_zeros(1)]), rtol=0, atol=0)
    if name not in ("ddpm", "dpm3M-sde", "heun-churn"):  # deterministic: near the exact PF-ODE answer
        no_denoise = factory(steps, grid)
        no_denoise.denoise = False
        # 16 steps uniform in t (VP) or Karras ρ = 3 (VE) end with one λ-step ~10× the previous one, which
        # multistep extrapolation handles badly (UniPC-2 bh1: 0.48, 2M: 0.19, DDIM 0.09); elsewhere ≤ 0.12
        bound = 0.6 if grid_name in ("uniform", "karras-rho3") else 0.2
        assert pathwise_rms(no_denoise, GM, sde, x_T) < bound


@pytest.mark.parametrize("name, factory, per_step", SOLVERS, ids=[s[0] for s in SOLVERS])
def test_explicit_grid_overrides_steps(name, factory, per_step):
    """A tensor grid sets the number of steps, whatever ``steps`` says — including the end-of-run order
    reduction (lower_order_final) and Heun's γ = S_churn/N, which must count the grid's steps."""
    sde = sd.VPSDE()
    ts = make_grid("log_snr", sde, 9)
    x_T = prior_draw(sde, 8, GM.dim)
    reference = factory(9, ts).sample(GM.score_model(sde), x_T=x_T, generator=torch.Generator().manual_seed(0))
    for steps in (3, 9, 50):
        out = factory(steps, ts).sample(GM.score_model(sde), x_T=x_T, generator=torch.Generator().manual_seed(0))
        assert out.nfe == per_step * 9 + 1
        torch.testing.assert_close(out.x, reference.x, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 0.5, 0.7]), torch.tensor([0.5, 0.0]), torch.tensor([2.0, 0.5]),
                                 torch.tensor([1.0]), torch.tensor([1.0, float("nan")])])
def test_invalid_explicit_grids_are_rejected(bad):
    with pytest.raises(ValueError):
        DPMSolver(grid=bad).sample(GM.score_model(sd.VPSDE()), shape=(2, GM.dim))


def test_unknown_grid_name_is_rejected():
    with pytest.raises(ValueError, match="grid must be one of"):
        UniPC(grid="cosine").sample(GM.score_model(sd.VPSDE()), shape=(2, GM.dim))
