"""The learned-vs-exact score diagnostic: e(t) = E‖ε_θ − ε*‖² against closed forms, its tie to the DSM loss,
and a short training run that lowers it."""
import argparse
import json
import math

import pytest
import torch

from sde_diffusion import ScoreModel
from sde_diffusion.bench import score_error as se
from sde_diffusion.data import GaussianMixture, eight_gaussians
from sde_diffusion.nets import MLP
from sde_diffusion.sde import VESDE, VPSDE

Z = 4.5  # tolerance in Monte Carlo standard errors (two-sided p ≈ 7e-6 per comparison)


def _setup(n=4096, seed=0):
    gmm, sde = eight_gaussians(), VPSDE()
    return gmm, sde, gmm.score_model(sde), gmm.sample(n, torch.Generator().manual_seed(seed))


def _sigma(sde, t):
    return sde._log_sigma(t.double()).exp().to(torch.float32)[:, None]


def _alpha_sigma(sde, t):
    t = torch.as_tensor(t, dtype=torch.float64)
    return sde._log_alpha(t).exp(), sde._log_sigma(t).exp()


def test_exact_model_has_zero_error():
    gmm, sde, exact, x0 = _setup(1024)
    curve = se.score_error(exact, exact, x0, se.time_grid(sde, 8), generator=torch.Generator().manual_seed(1))
    assert torch.equal(curve.error, torch.zeros(8, dtype=torch.float64))
    assert torch.equal(curve.relative, torch.zeros(8, dtype=torch.float64))
    assert (curve.exact_norm > 0).all() and curve.dim == 2 and curve.n == 1024
    assert curve.loss_gap() == 0.0


def test_constant_eps_offset_error_and_loss_gap():
    """ε = ε* + c u (score shifted by −c u/σ): e(t) = c²‖u‖² at every t, and the DSM loss rises by c²‖u‖²/D."""
    gmm, sde, exact, x0 = _setup()
    c, u = 0.3, torch.tensor([1.0, -2.0])
    shifted = ScoreModel.from_score_fn(lambda x, t: gmm.score(x, t, sde) - c * u / _sigma(sde, t), sde)
    grid = se.time_grid(sde, 10)
    curve = se.score_error(shifted, exact, x0, grid, generator=torch.Generator().manual_seed(1))
    expected = c**2 * float(u.pow(2).sum())  # 0.45
    assert torch.allclose(curve.error, torch.full_like(curve.error, expected), rtol=1e-4)
    assert curve.loss_gap() == pytest.approx(expected / 2, rel=1e-4)  # D = 2; the integral of a constant is exact
    losses = se.paired_dsm_losses({"exact": exact, "shifted": shifted}, x0, torch.Generator().manual_seed(2),
                                  reference="exact")
    assert losses["exact"]["gap"] == 0.0
    gap = losses["shifted"]
    assert abs(gap["gap"] - expected / 2) < Z * gap["gap_stderr"]
    assert gap["gap_stderr"] < 0.05 * expected  # the paired estimate is sharp enough to tell 0.225 from 0.45


def test_state_dependent_perturbation_matches_closed_form():
    """ε = ε* − c x (score + c x/σ): e(t) = c² E‖x_t‖² = c² (α² E‖x_0‖² + D σ²), E‖x_0‖² = r² + D s² = 4.08."""
    gmm, sde, exact, x0 = _setup()
    c = 0.5
    perturbed = ScoreModel.from_score_fn(lambda x, t: gmm.score(x, t, sde) + c * x / _sigma(sde, t), sde)
    grid = se.time_grid(sde, 12)
    curve = se.score_error(perturbed, exact, x0, grid, generator=torch.Generator().manual_seed(3))
    alpha, sigma = _alpha_sigma(sde, grid)
    expected = c**2 * (alpha**2 * (2.0**2 + 2 * 0.2**2) + 2 * sigma**2)
    assert ((curve.error - expected).abs() < Z * curve.error_stderr).all(), (curve.error, expected)
    assert expected.max() / expected.min() > 1.5  # the t-dependence (the σ² factor of e(t)) is actually tested


def test_relative_error_denominator_single_gaussian():
    """One Gaussian N(μ, s² I): ε* = σ (x − α μ)/(α² s² + σ²), so E‖ε*‖² = D σ²/(α² s² + σ²)."""
    s2, sde = 0.3**2, VESDE(sigma_min=0.01, sigma_max=5.0)
    gauss = GaussianMixture([[1.0, -0.5, 2.0]], [s2])
    exact = gauss.score_model(sde)
    x0 = gauss.sample(4096, torch.Generator().manual_seed(4))
    grid = se.time_grid(sde, 9)
    zero = ScoreModel(lambda x, t: torch.zeros_like(x), sde)
    curve = se.score_error(zero, exact, x0, grid, generator=torch.Generator().manual_seed(5))
    alpha, sigma = _alpha_sigma(sde, grid)
    expected = 3 * sigma**2 / (alpha**2 * s2 + sigma**2)
    assert ((curve.exact_norm - expected).abs() < Z * curve.exact_norm_stderr).all()
    assert torch.equal(curve.error, curve.exact_norm)  # ε_θ = 0 errs by exactly ‖ε*‖²
    assert torch.allclose(curve.relative, torch.ones_like(curve.relative))


def test_short_training_lowers_mid_t_error():
    gmm, sde, exact, _ = _setup()
    x_train = gmm.sample(4000, torch.Generator().manual_seed(10))
    trained = se.train_toy_model(x_train, seed=0, steps=200, batch_size=128, warmup=20)
    assert trained.steps == 200 and trained.record["step"] == 200
    untrained = ScoreModel(MLP(dim=2), sde)  # zero-initialised output layer: ε_θ = 0
    x0 = gmm.sample(2048, torch.Generator().manual_seed(11))
    mid = torch.tensor([0.2, 0.35, 0.5], dtype=torch.float64)
    before = se.score_error(untrained, exact, x0, mid, generator=torch.Generator().manual_seed(12))
    after = se.score_error(trained.ema_model, exact, x0, mid, generator=torch.Generator().manual_seed(12))
    assert torch.allclose(before.relative, torch.ones(3, dtype=torch.float64))
    assert (after.relative < 0.25).all(), after.relative
    assert (after.error + Z * after.error_stderr < before.error).all()


def test_bad_inputs_name_the_argument():
    gmm, sde, exact, x0 = _setup(16)
    grid = se.time_grid(sde, 4)
    with pytest.raises(TypeError, match="model"):
        se.score_error(lambda x, t: x, exact, x0, grid)
    with pytest.raises(ValueError, match="t must lie in"):
        se.score_error(exact, exact, x0, torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match="non-empty 1-d"):
        se.score_error(exact, exact, x0, torch.tensor(0.5))
    with pytest.raises(ValueError, match="same SDE schedule"):
        se.score_error(gmm.score_model(VPSDE(beta_max=10.0)), exact, x0, grid)
    with pytest.raises(ValueError, match="x0 must have shape"):
        se.score_error(exact, exact, x0[:1], grid)
    with pytest.raises(ValueError, match="NaN"):
        se.score_error(exact, exact, torch.full((4, 2), math.nan), grid)
    with pytest.raises(ValueError, match="points"):
        se.time_grid(sde, 1)
    with pytest.raises(ValueError, match="reference"):
        se.paired_dsm_losses({"exact": exact}, x0, reference="trained")
    with pytest.raises(ValueError, match="x must be"):
        se.train_toy_model(torch.zeros(10))
    grid = se.time_grid(sde, 5)
    assert grid[0] == sde.eps and grid[-1] == sde.T and (grid.diff() > 0).all()
    assert torch.allclose(grid.log().diff(), grid.log().diff()[0].expand(4))  # log-spaced


@pytest.mark.slow
def test_quick_benchmark_writes_consistent_reports(tmp_path):
    args = argparse.Namespace(quick=True, out=str(tmp_path), steps=0, seed=0, threads=1)
    report = se.run(args, "bench score_error --quick", log=lambda *a: None)
    for name in ("score_error.md", "score_error.json", "score_error.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "score_error.json").read_text())["meta"]["train"]["steps"] == 300
    losses = report["dsm_losses"]
    assert losses["exact score"]["gap"] == 0.0
    for name, key in (("trained MLP (EMA)", "EMA"), ("trained MLP (raw)", "raw")):
        gap, integral = losses[name], report["loss_gap_from_curve"][key]
        assert gap["gap"] > 0  # the exact model's loss is the minimum
        assert abs(gap["gap"] - integral) < Z * gap["gap_stderr"] + 0.25 * integral  # 12-point trapezoid: coarse
    rows = {(r["sampler"], r["model"]): r for r in report["samples"]["rows"]}
    assert all(r["rms_to_reference"] == 0.0 for (s, m), r in rows.items() if m == "exact score")
