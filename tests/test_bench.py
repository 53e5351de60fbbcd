"""The solver benchmark's machinery: reference solve, peer wrappers, NFE budgets, report files."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from sde_diffusion import samplers
from sde_diffusion.bench import peers, solver_fitted, solver_measure, solvers
from sde_diffusion.bench.problems import (
    CallCounter, counted_score_model, make_problem, solve_pf_ode, tweedie,
)
from sde_diffusion.data import GaussianMixture, eight_gaussians
from sde_diffusion.sde import VPSDE


def _gaussian():
    cov = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.2, 0.01], [0.0, 0.01, 2e-3]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([[0.5, -1.0, 0.2]], dtype=torch.float64), cov[None])




@pytest.fixture(scope="module")
def small_problem():
    return make_problem("tiny", eight_gaussians(), "eight Gaussians", n=24, seed=3, check_subset=0)


def test_reference_matches_closed_form_flow():
    gmm, sde = _gaussian(), VPSDE(0.1, 20.0, eps=1e-3)
    x_T = sde.prior_sample((16, 3), torch.Generator().manual_seed(0)).double()
    x_eps, nfe = solve_pf_ode(gmm, sde, x_T, denoise=False)
    exact = gmm.flow(x_T, sde.T, sde.eps, sde)
    assert nfe > 0
    assert (x_eps - exact).abs().max() < 1e-6
    x0, _ = solve_pf_ode(gmm, sde, x_T)
    assert (x0 - tweedie(gmm, sde, exact, sde.eps)).abs().max() < 1e-6


def test_rms_error_and_counter(small_problem):
    assert small_problem.rms_error(small_problem.reference.float()) < 1e-6
    assert small_problem.rms_error(small_problem.reference + 0.5) == pytest.approx(0.5)
    offsets = torch.arange(24, dtype=torch.float64)[:, None] * torch.tensor([0.3, -0.4], dtype=torch.float64)
    errors = solver_measure.per_sample_errors(small_problem, small_problem.reference + offsets)
    assert torch.allclose(errors, 0.5 * torch.arange(24, dtype=torch.float64) / 2 ** 0.5)  # |(0.3k, −0.4k)|/√2
    assert solver_measure.tail_share(errors) == pytest.approx(23 ** 2 / sum(k * k for k in range(24)))  # worst 1: k = 23
    assert solver_measure.tail_share(errors, 0.1) == pytest.approx(sum(k * k for k in (21, 22, 23)) / sum(k * k for k in range(24)))
    c = CallCounter(lambda a: a + 1)
    assert c(1) == 2 and c(2) == 3 and c.calls == 2


def test_error_decreases_with_nfe_and_counts_match(small_problem):
    method = next(m for m in solvers.deterministic_methods() if m.method == "DDIM" and m.schedule == "log_snr")
    points = solvers.run_fixed(method, small_problem, (5, 20, 80), seed=0)
    assert [p.nfe for p in points] == [5, 20, 80]
    assert all(p.nfe_reported is None for p in points)  # the sampler's own NFE equals the counted one
    errors = [p.error for p in points]
    assert errors[0] > errors[1] > errors[2]
    assert solvers.nfe_to_reach(points, errors[1] * 1.01)["measured"] == 20
    assert solvers.nfe_to_reach(points, errors[2] / 10) is None


def test_budget_lands_on_or_under(small_problem):
    if "heun" not in samplers.REGISTRY:
        pytest.skip("Heun is not registered")
    heun = next(m for m in solvers.deterministic_methods() if m.method == "Heun (EDM)")
    points = solvers.run_fixed(heun, small_problem, (5, 10), seed=0)
    assert [p.nfe for p in points] == [5, 9]  # 2·steps + 1


def test_rk45_peer_counts_every_evaluation(small_problem):
    model, counter = counted_score_model(small_problem.gmm, small_problem.sde)
    x, nfe = peers.run_score_sde_ode(model, small_problem.x_T, rtol=1e-4, atol=1e-4)
    assert nfe == counter.calls
    assert small_problem.rms_error(x) < 1e-2


kd = peers.load_k_diffusion_sampling()
needs_kd = pytest.mark.skipif(kd is None, reason="k-diffusion is not installed (optional benchmark dependency)")


@needs_kd
def test_k_diffusion_loaded_without_package_init():
    import sys

    assert hasattr(kd, "sample_dpmpp_2m") and "torchvision" not in sys.modules


@needs_kd
def test_karras_denoiser_reproduces_x0():
    gmm, sde = eight_gaussians(), VPSDE()
    model, _ = counted_score_model(gmm, sde)
    den = peers.KarrasDenoiser(model)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(1))
    for t in (1e-3, 0.05, 0.4, 1.0):
        alpha = float(sde._log_alpha(torch.tensor(t, dtype=torch.float64)).exp())
        sig = torch.full((7,), den.sigma_tilde(t))
        assert torch.allclose(den(x / alpha, sig), model.x0(x, torch.tensor(t)), atol=1e-5, rtol=1e-5)
    assert den.calls == 4


@needs_kd
def test_k_diffusion_euler_is_ddim(small_problem):
    """DDIM is Euler in (x̃, σ̃): on the same σ̃ grid, from the same x_T, both samplers agree."""
    model, _ = counted_score_model(small_problem.gmm, small_problem.sde)
    den = peers.KarrasDenoiser(model)
    s_min, s_max = den.sigma_tilde(small_problem.sde.eps), den.sigma_tilde(small_problem.sde.T)
    x_kd, nfe_kd = peers.run_k_diffusion("euler", model, small_problem.x_T,
                                         peers.k_diffusion_sigmas("exponential", 9, s_min, s_max))
    out = samplers.DDIM(steps=9, grid="log_snr").sample(model, x_T=small_problem.x_T)
    assert nfe_kd == out.nfe == 10
    assert (x_kd - out.x).abs().max() < 1e-4


def test_quick_report_files(tmp_path, monkeypatch):
    keep = {"DDIM", "DDIM (fitted grid)", "euler", "RK45 (scipy)", "adaptive DPM-Solver-23", "Euler-Maruyama",
            "euler_ancestral"}
    for name in ("deterministic_methods", "tolerance_methods", "stochastic_methods", "fitted_methods"):
        full = getattr(solvers, name)
        monkeypatch.setattr(solvers, name, lambda *a, full=full, **k: [m for m in full(*a, **k) if m.method in keep])
    monkeypatch.setattr(solvers, "default_problems", lambda n2, n16, seed: {
        "gmm2d": make_problem("gmm2d", eight_gaussians(), "eight Gaussians", 16, seed, check_subset=8)})
    threads = torch.get_num_threads()
    assert solvers.main(["--quick", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads
    for name in ("solvers.md", "solvers.json", "solvers.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = json.loads((tmp_path / "solvers.json").read_text())
    info = report["problems"]["gmm2d"]
    assert info["budgets"] == list(solvers.QUICK_BUDGETS)
    for group in ("deterministic", "stochastic"):
        for res in info["results"][group]:
            for p in res["points"]:
                assert p["nfe"] <= p["budget"]
                assert p["error"] is None or p["error"] >= 0
    assert [e["budget"] for e in info["targets"]["nfe_ratio"]] == list(solvers.TARGET_BUDGETS)
    md = (tmp_path / "solvers.md").read_text()
    assert "sde-diffusion bench solvers --quick" in md and "Summary of the issue's targets" in md
    rk45 = next(r for r in info["results"]["tolerance"] if r["method"] == "RK45 (scipy)")
    assert any(tuple(p["param"]) == (1e-5, 1e-5) and math.isfinite(p["error"]) for p in rk45["points"])
    # the fitted-grid column: same per-sample NFE as DDIM's default grid, its calibration cost kept apart
    default = next(r for r in info["results"]["deterministic"] if r["method"] == "DDIM" and r["schedule"] == "log_snr")
    fitted = next(r for r in info["results"]["deterministic"] if r["method"] == "DDIM" + solvers.FITTED_SUFFIX)
    assert [p["budget"] for p in fitted["points"]] == [10] == list(solvers.QUICK_CALIBRATION.budgets)
    for p, q in zip(fitted["points"], [q for q in default["points"] if q["budget"] == 10]):
        assert p["nfe"] == q["nfe"] == p["budget"] and p["calibration"]["nfe"] > 10 * p["nfe"]
        assert p["calibration"]["chosen"] in p["calibration"]["candidates"] and p["median"] <= p["error"] * 1.5
        assert p["calibration"]["fit_seed"] != report["meta"]["seed"] and q["calibration"] is None
    assert "Fitted grids" in md and "DDIM (fitted grid)" in md and "default grids only" in md
    assert info["targets"]["best_of_field"]["budget"] == 5
    ratio = info["targets"]["nfe_ratio"][0]
    assert ratio["ratio_interval"][0] <= ratio["ratio"] <= ratio["ratio_interval"][1]


def test_paired_bootstrap_interval_of_the_ratio():
    peer = torch.rand(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    assert solver_measure.ratio_interval(0.3 * peer, peer) == pytest.approx((0.3, 0.3))  # RMS scales with e_k
    ours = 0.3 * peer
    ours[7] = 40.0  # one trajectory in another mode decides the RMS; the interval shows it
    lo, hi = solver_measure.ratio_interval(ours, peer)
    point = float(ours.pow(2).mean().sqrt() / peer.pow(2).mean().sqrt())
    assert lo < 0.5 < 2 < point < hi
    with pytest.raises(ValueError, match="same x_T"):
        solver_measure.ratio_interval(ours, peer[:10])


def test_smooth_grid_search_moves_only_the_legendre_modes():
    """The fitted column's smooth candidate: grids.optimize(basis=k) changes θ only along P_1 … P_k of the step index."""
    from sde_diffusion.samplers.grid_optimize import log_snr_parameters, optimize, smooth_modes

    u = np.linspace(-1, 1, 6)
    legendre = np.stack([u, (3 * u ** 2 - 1) / 2, (5 * u ** 3 - 3 * u) / 2], 1)
    assert abs(smooth_modes(6, 3) - legendre).max() < 1e-12
    assert (smooth_modes(4, None) == np.eye(4)).all() and smooth_modes(4, 9).shape == (4, 3)
    sde = VPSDE(0.1, 20.0, eps=1e-3)
    model = eight_gaussians().score_model(sde)
    grid, info = optimize(samplers.DDIM(steps=6), model, 6, (2,), torch.Generator().manual_seed(0), n_calibration=32,
                          max_evals=30, basis=2, return_info=True)
    theta = torch.from_numpy(log_snr_parameters(sde, grid))  # the log-SNR grid's θ is constant
    span = torch.cat([torch.ones(6, 1, dtype=torch.float64), torch.from_numpy(legendre[:, :2])], 1)
    coef = torch.linalg.lstsq(span, theta[:, None]).solution
    assert (span @ coef - theta[:, None]).abs().max() < 1e-8 and coef[1:].abs().max() > 1e-3  # it moved, in the span
    assert info.final_rms < info.initial_rms and info.evaluations <= 30


def test_calibration_draws_are_disjoint_from_the_evaluation_draws(small_problem):
    settings = solver_fitted.CalibrationSettings(n_fit=40, n_validation=30)
    cal = solver_fitted.calibration_set(small_problem, settings, seed=3)
    assert cal.fit_x.shape == (40, 2) and cal.validation_x.shape == (30, 2)
    every = torch.cat([small_problem.x_T.double(), cal.fit_x, cal.validation_x])
    assert torch.cdist(every, every).add(torch.eye(len(every))).min() > 1e-3  # no row twice
    reference, _ = solve_pf_ode(small_problem.gmm, small_problem.sde, cal.validation_x)
    assert (cal.validation_reference - reference).abs().max() < 1e-8
    # evaluation x_T that are calibration draws (in float32) are refused
    clash = dataclasses.replace(small_problem, x_T=cal.validation_x[5:9].float(), extra={})
    with pytest.raises(ValueError, match="disjoint"):
        solver_fitted.calibration_set(clash, settings, seed=3)
    with pytest.raises(ValueError, match="disjoint"):
        solver_fitted.assert_disjoint(small_problem.x_T, cal.fit_x, cal.fit_x[3:4])


def test_fitted_grid_is_the_best_candidate_on_validation_draws(small_problem):
    """fit_grid picks the least validation RMS among its candidates; a default grid as sole candidate comes back as is."""
    settings = solver_fitted.CalibrationSettings(n_fit=32, n_validation=32, max_evals=15, smooth_max_evals=10)
    sampler = samplers.DDIM(steps=4)
    grid, info = solver_fitted.fit_grid(small_problem, sampler, settings, seed=3)
    vals = {n: c["validation_rms"] for n, c in info["candidates"].items()}
    assert set(vals) == set(settings.candidates) and vals[info["chosen"]] == min(vals.values())
    cal = solver_fitted.calibration_set(small_problem, settings, seed=3)
    model = small_problem.gmm.score_model(small_problem.sde)
    out = samplers.DDIM(steps=4, grid=grid).sample(model, x_T=cal.validation_x, dtype=torch.float64)
    rms = float((out.x - cal.validation_reference).pow(2).mean().sqrt())
    assert rms == pytest.approx(vals[info["chosen"]], rel=1e-9)
    assert info["nfe"] >= len(vals) * 5  # at least one 5-NFE validation run per candidate, none of it in a Point's NFE
    only = solver_fitted.CalibrationSettings(n_fit=32, n_validation=32, candidates=("karras",))
    grid, info = solver_fitted.fit_grid(small_problem, sampler, only, seed=3)
    assert info["chosen"] == "karras" and torch.equal(grid, samplers.grids.make_grid("karras", small_problem.sde, 4))


def test_overhead_hand_loops_do_the_same_arithmetic(tmp_path):
    from sde_diffusion.bench import overhead

    sde = VPSDE()
    model = overhead.ScoreModel(overhead.trivial_net, sde, prediction="eps")
    x_T = sde.prior_sample((3, 2, 4, 4), torch.Generator().manual_seed(0))
    for case in overhead.cases():
        out = case.make(6).sample(model, x_T=x_T, generator=torch.Generator().manual_seed(1))
        ref = case.hand(overhead.trivial_net, sde, x_T, 6, torch.Generator().manual_seed(1))
        assert (out.x - ref).abs().max() < 1e-3, case.name
    report = overhead.main(["--quick", "--out", str(tmp_path)])
    assert report == 0
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert {r["sampler"] for r in data["rows"]} >= {"EulerMaruyama", "DDIM", "TorchSDE (euler)"}
    assert all(r["ratio"] > 0 for r in data["rows"])
    assert (tmp_path / "overhead.md").read_text().startswith("# Sampler overhead")


def test_demo_trained_rows_follow_their_exact_rows_from_the_same_x_T(tmp_path, monkeypatch):
    """With the exact model standing in for the trained one, every "(trained MLP)" row must equal its exact row:
    same sampler, same x_T and noise. Without training the table has only the exact rows, unchanged."""
    from sde_diffusion import demo
    from sde_diffusion.bench import score_error

    def fake_training(x, seed=0, **overrides):
        exact = eight_gaussians().score_model(VPSDE())
        return score_error.ToyTraining(exact, exact, 0.0, 0, {}, {"batch_size": 512})

    monkeypatch.setattr(score_error, "train_toy_model", fake_training)
    plain = demo.run_demo(tmp_path / "plain", n=48, seed=1, train=False)
    rows = demo.run_demo(tmp_path / "trained", n=48, seed=1)
    assert [r.name for r in plain] == [name for name, _ in demo.DEMO_SAMPLERS]
    assert len(rows) == len(plain) + len(demo.TRAINED_SAMPLERS)
    names = [r.name for r in rows]
    for name in demo.TRAINED_SAMPLERS:
        i = names.index(name)
        exact_row, trained_row = rows[i], rows[i + 1]
        assert trained_row.name == name + demo.TRAINED_SUFFIX
        assert (trained_row.nfe, trained_row.mmd, trained_row.sliced_w2) == (exact_row.nfe, exact_row.mmd, exact_row.sliced_w2)
    exact_rows = [(r.name, r.nfe, r.mmd, r.sliced_w2) for r in rows if not r.name.endswith(demo.TRAINED_SUFFIX)]
    assert exact_rows == [(r.name, r.nfe, r.mmd, r.sliced_w2) for r in plain]  # training leaves the exact rows' draws alone
    table = (tmp_path / "trained" / "table.md").read_text()
    assert table.count(demo.TRAINED_SUFFIX + " |") == len(demo.TRAINED_SAMPLERS) and "toy preset" in table
    assert demo.TRAINED_SUFFIX not in (tmp_path / "plain" / "table.md").read_text()
    assert (tmp_path / "trained" / "samples.png").stat().st_size > (tmp_path / "plain" / "samples.png").stat().st_size
