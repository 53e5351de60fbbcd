"""The stochastic-sampler benchmark at tiny sizes: its exact score, its floor from exact draws, that it flags a wrong
sampler, and the report files of a run."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from sde_diffusion.bench import stochastic as B
from sde_diffusion.bench.problems import CallCounter, anisotropic_mixture
from sde_diffusion.data.gmm import GaussianMixture, eight_gaussians
from sde_diffusion.model import ScoreModel
from sde_diffusion.sde import VPSDE

F64 = torch.float64


@pytest.mark.parametrize("gmm", [eight_gaussians(), anisotropic_mixture(dim=5, seed=3)], ids=["2d", "5d"])
def test_mixture_score_matches_gaussian_mixture_score(gmm):
    sde = VPSDE(0.1, 20.0, eps=1e-3)
    score = B.MixtureScore(gmm, sde)
    x = 1.5 * torch.randn(64, gmm.dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    for t in (torch.tensor(0.4, dtype=F64), torch.full((64,), 2e-3, dtype=F64), torch.linspace(1e-3, 1.0, 64, dtype=F64)):
        torch.testing.assert_close(score(x, t), gmm.score(x, t, sde), rtol=1e-9, atol=1e-9)


def test_exact_output_is_the_tweedie_denoise_of_exact_noisy_draws():
    """One Gaussian N(μ, diag λ): x̂_0 = μ + αλ/(α²λ + σ²) (x_eps − αμ), so Var x̂_0 = λ · α²λ/(α²λ + σ²) per coordinate."""
    lam = torch.tensor([1e-4, 1e-3, 1.0], dtype=F64)
    gmm = GaussianMixture([[0.5, -1.0, 2.0]], lam[None])
    target = B.Target("one", "", gmm, VPSDE(0.1, 20.0, eps=1e-3))
    eps = torch.tensor(1e-3, dtype=F64)
    alpha2, sigma2 = float(target.sde._log_alpha(eps).exp()) ** 2, float(target.sde._log_sigma(eps).exp()) ** 2
    expected = lam * alpha2 * lam / (alpha2 * lam + sigma2)
    assert expected[0] < 0.5 * lam[0]  # the shrinkage is large where λ ≲ σ²
    n = 40_000
    x = target.exact_output(n, torch.Generator().manual_seed(0))
    var = x.var(0)
    assert (var / expected - 1).abs().max() < 5 * math.sqrt(2 / n), (var, expected)
    torch.testing.assert_close(x.mean(0), gmm.means[0], atol=5 * float(expected.max().sqrt()) / math.sqrt(n), rtol=0)


def test_an_accurate_solve_matches_the_exact_output_and_not_p():
    """An accurate ODE solve (then the denoise) scores ≈ 0 against q*, while against p the denoise shift shows."""
    gmm = GaussianMixture([[0.5, -1.0, 2.0]], torch.tensor([[1e-4, 1e-3, 1.0]], dtype=F64))
    target = B.make_target("one", "", gmm, seed=0, entropy_samples=100_000, energy_samples=200)
    n = 4000
    setting = B.Setting("ours (ODE)", "UniPC-3", "unipc", {"order": 3, "grid": "log_snr"}, "log_snr")
    model, counter = B.counted_model(gmm, target.sde)
    point = B.measure(setting, target, model, counter, 51, n, seed=3, energy=False)
    shift = target.reference.value - target.entropy.value
    assert shift < -10 * point["se"]  # the denoise alone is far outside the noise ...
    assert abs(point["dh"]) < 4 * point["se"], point  # ... and an exact solve sits on q*
    assert abs(point["dh"] + shift) > 6 * point["se"]  # scored against p it would not


@pytest.fixture(scope="module")
def target():
    return B.make_target("gmm2d", "eight Gaussians", eight_gaussians(), seed=0, entropy_samples=100_000, energy_samples=300)


def test_floor_is_computed_from_exact_draws(target, monkeypatch):
    """Every floor draw is an exact output (the mixture's own sampler, then the exact denoise); the ΔH floor has mean ≈ 0
    and sd ≈ sd(log p)/√n."""
    calls = []
    sample = target.gmm.sample

    def spy(n, generator=None, dtype=torch.float32):
        calls.append(n)
        return sample(n, generator, dtype)

    monkeypatch.setattr(target.gmm, "sample", spy)
    n, repeats = 1000, 12
    floor = B.noise_floor(target, n, repeats, seed=5)
    assert calls == [n] * repeats
    expected_sd = float(target.log_prob(sample(50_000, torch.Generator().manual_seed(9))).std()) / math.sqrt(n)
    assert abs(floor["dh"]["mean"]) < 4 * expected_sd / math.sqrt(repeats)
    assert 0.5 * expected_sd < floor["dh"]["sd"] < 1.6 * expected_sd  # a sd of 12 draws is within ±40 %
    assert floor["dh"]["repeats"] == repeats and floor["mode_tv"]["max"] < 0.1


def test_half_score_sampler_is_far_outside_the_floor(target):
    """Euler–Maruyama with the exact score sits near the floor at 100 steps; with the score halved it is far outside."""
    n, budget = 2000, 101
    floor_sd = B.noise_floor(target, n, 6, seed=11)["dh"]["sd"]
    setting = B.Setting("ours", "Euler–Maruyama", "euler_maruyama", {"grid": "uniform"}, "uniform")
    model, counter = B.counted_model(target.gmm, target.sde)
    exact = B.measure(setting, target, model, counter, budget, n, seed=1, energy=False)
    assert exact["nfe"] == budget and exact["steps"] == 100  # 100 steps + the final denoise, counted
    halved = CallCounter(lambda x, t, _s=B.MixtureScore(target.gmm, target.sde): 0.5 * _s(x, t))
    wrong = B.measure(setting, target, ScoreModel.from_score_fn(halved, target.sde), halved, budget, n, seed=1, energy=False)
    assert abs(exact["dh"]) < 6 * floor_sd, (exact, floor_sd)
    assert wrong["dh"] > 30 * floor_sd, (wrong, floor_sd)  # a half score over-disperses: ΔH ≫ 0


def test_quick_run_writes_the_reports(tmp_path):
    args = SimpleNamespace(quick=True, out=str(tmp_path), seed=0, n2=200, n16=150, samplers="euler–maruyama,euler_ancestral",
                           threads=1)
    report = B.run(args, "sde-diffusion bench stochastic --quick", log=lambda *a: None)
    for suffix in ("md", "json", "png"):
        assert (tmp_path / f"stochastic.{suffix}").stat().st_size > 0
    saved = json.loads((tmp_path / "stochastic.json").read_text())
    assert set(saved["problems"]) == {"gmm2d", "gmm16d"}
    res = saved["problems"]["gmm2d"]
    assert res["floor"]["dh"]["repeats"] == 4 and res["floor"]["dh"]["sd"] > 0
    samplers = {f["sampler"] for f in res["families"]}
    assert "Euler–Maruyama" in samplers and "Predictor–corrector (Langevin)" not in samplers
    em = next(f for f in res["families"] if f["sampler"] == "Euler–Maruyama")
    for budget in ("10", "20"):
        cell = em["budgets"][budget]
        assert cell["tuned"]["nfe"] <= int(budget) and cell["tuned"]["seed"] == 2 and cell["default"]["seed"] == 2
        assert {p["seed"] for p in cell["calibration"]} == {1}  # tuned on another seed than it is scored on
    assert report["problems"]["gmm2d"]["headline"]["best"]
    assert "Floor" in (tmp_path / "stochastic.md").read_text()


def test_bad_arguments_name_the_flag(tmp_path):
    args = SimpleNamespace(quick=True, out=str(tmp_path), seed=0, n2=0, n16=10, samplers=None, threads=1)
    with pytest.raises(ValueError, match="--n2"):
        B.run(args, "x", log=lambda *a: None)
    args = SimpleNamespace(quick=True, out=str(tmp_path), seed=0, n2=100, n16=10, samplers="nonesuch", threads=1)
    with pytest.raises(ValueError, match="--samplers"):
        B.run(args, "x", log=lambda *a: None)


def test_ays_candidate_is_the_fitted_grid_and_is_fitted_once(target):
    """grid="ays" runs the sampler on Align Your Steps' grid for that step count (from its own calibration seed), cached
    with its cost; past AYS_MAX_STEPS the candidate is a recorded failure, not a crash."""
    setting = B.Setting("ours", "DDPM (ancestral)", "ddpm", {"grid": "ays"}, "ays")
    model, counter = B.counted_model(target.gmm, target.sde)
    point = B.measure(setting, target, model, counter, 6, 500, seed=1, energy=False)
    grid = target.ays_grid(5)
    assert point["steps"] == 5 and point["nfe"] == 6 and set(target.ays) == {5} and target.ays[5][1]["nfe"] > 100
    direct = B.Setting("ours", "DDPM (ancestral)", "ddpm", {"grid": grid}, "ays")
    again = B.measure(direct, target, model, counter, 6, 500, seed=1, energy=False)
    assert again["dh"] == point["dh"]
    assert not torch.equal(grid, B.samplers.grids.make_grid("uniform", target.sde, 5))
    far = B.measure(setting, target, model, counter, B.AYS_MAX_STEPS + 10, 100, seed=1, energy=False)
    assert "AYS" in far["failure"] and far["dh"] == math.inf
    fams = {f.sampler: f for f in B.families()}
    for name in ("Euler–Maruyama", "DDPM (ancestral)", "SDE-DPM-Solver++(2M)"):
        assert any(c.options.get("grid") == "ays" for c in fams[name].candidates)
