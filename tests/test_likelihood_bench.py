"""The likelihood benchmark: its pieces against closed forms, and a tiny end-to-end run (a few seconds)."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.bench import likelihood as B
from sde_diffusion.data.gmm import GaussianMixture, eight_gaussians

F64 = torch.float64
GAUSS = GaussianMixture([[0.3, -0.5]], [[[0.5, 0.2], [0.2, 0.3]]])


def test_nfe_to_reach_interpolates_log_log():
    points = [(40, 1e-2), (80, 1e-4), (160, 1e-6)]
    assert B.nfe_to_reach(points, 1e-3) == pytest.approx(math.sqrt(40 * 80))  # halfway in log error → geometric mean
    assert B.nfe_to_reach(points, 1e-1) == 40.0  # all below: the first
    assert B.nfe_to_reach(points, 1e-7) is None  # never reached
    # a bump above the target after a dip: reaching means staying below
    assert B.nfe_to_reach([(40, 1e-4), (80, 2e-3), (160, 2e-5)], 1e-3) > 80


def test_scipy_likelihood_matches_closed_form_and_log_likelihood_probes():
    sde = sd.VPSDE()
    x = GAUSS.sample(8, torch.Generator().manual_seed(0), dtype=F64)
    model = GAUSS.score_model(sde)
    z, delta, nfe = B.scipy_likelihood(model, x, None, 1e-8, 1e-8)
    truth = GAUSS.marginal_log_prob(x, sde.eps, sde) - GAUSS.marginal_log_prob(z, sde.T, sde)
    assert float((delta - truth).abs().max()) < 1e-6 and nfe > 50
    assert float(delta.abs().min()) > 0.5
    # Hutchinson: fixed_probes(x, seed) are the probes log_likelihood draws from that seed, so the two solvers agree
    z_h, delta_h, _ = B.scipy_likelihood(model, x, B.fixed_probes(x, 3), 1e-8, 1e-8)
    ours = B._log_likelihood(model, x, "ours", 1e-6, 3)
    assert float((delta_h + sde.prior_logp(z_h) - ours.logp).abs().max()) < 1e-5
    assert float((delta_h - delta).abs().max()) > 1e-2  # and the probes do matter


def test_knot_rk4_reference_on_a_ddpm_schedule():
    """Exact score of a Gaussian under a 30-step DiscreteVPSDE: RK4 between the knots gives log p_t0 in closed form."""
    sde = sd.DiscreteVPSDE.linear(n=30, beta_start=1e-2, beta_end=0.4)
    x = GAUSS.sample(4, torch.Generator().manual_seed(1), dtype=F64)
    model = GAUSS.score_model(sde)
    logp, nfe = B.knot_rk4_logp(model, x, B.fixed_probes(x, 0), substeps=2)
    assert nfe == 4 * 2 * 29 + 0
    # the prior N(0, 1) stands in for p_T: add back its gap at the exact latent
    z = GAUSS.flow(x, sde.eps, sde.T, sde)
    truth = GAUSS.marginal_log_prob(x, sde.eps, sde) + sde.prior_logp(z) - GAUSS.marginal_log_prob(z, sde.T, sde)
    # one probe: Hutchinson is unbiased, not exact, so compare with the same-probe solve of the package's solver
    ours = log_likelihood_same_probes(model, x, 0)
    assert float((logp - ours).abs().max()) < 2e-3
    exact, _ = B.knot_rk4_logp(model, x, None, substeps=2)
    assert float((exact - truth).abs().max()) < 1e-3


def log_likelihood_same_probes(model, x, seed):
    return sd.log_likelihood(model, x, exact_divergence=False, rtol=1e-7, atol=1e-7,
                             generator=torch.Generator().manual_seed(seed)).logp


def test_tiny_end_to_end_run_writes_the_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "QUICK_TOLERANCES", {"ours": (1e-2, 1e-4), "dopri5": (1e-4,), "score_sde": (1e-5,)})
    monkeypatch.setattr(B, "gmm_problems", lambda quick, seed: {
        "gmm2d": (eight_gaussians(), sd.VPSDE(), eight_gaussians().sample(6, torch.Generator().manual_seed(0), dtype=F64), "tiny")})
    args = SimpleNamespace(quick=True, seed=0, checkpoint=None, out=str(tmp_path), threads=0)
    report = B.run(args, "test", log=lambda *a: None)
    saved = json.loads((tmp_path / "likelihood.json").read_text())
    assert saved["gmm"]["gmm2d"]["summary"]["exact"]["score_sde_setting"]["nfe"] > 10
    rows = report["gmm"]["gmm2d"]["rows"]
    assert {(r["method"], r["divergence"]) for r in rows} == {(m, d) for m in B.METHODS for d in ("exact", "hutchinson")}
    md = (tmp_path / "likelihood.md").read_text()
    assert "ours / score_sde" in md and "Not run" in md


def test_digits_pieces_on_an_exact_score_ddpm_model():
    """The digits part on 8×8 images with the exact score of a Gaussian under a short DDPM schedule (no checkpoint)."""
    sde = sd.DiscreteVPSDE.linear(n=20, beta_start=1e-2, beta_end=0.5)
    gauss = GaussianMixture([[0.0] * 64], [[0.3] * 64])
    model = gauss.score_model(sde)
    images = B.digits_images(3)
    assert images.dtype == torch.uint8 and images.shape == (3, 1, 8, 8)
    bpd = B.digits_bits_per_dim(model, images, seed=0, batch=3, t_samples=4, log=lambda *a: None)
    assert set(bpd) == {"PF-ODE (Hutchinson, ours)", "discrete ELBO (discretized decoder)", "continuous ELBO"}
    # the ELBOs bound −log p from above: their bits/dim are not below the PF-ODE's by more than the noise
    ode = bpd["PF-ODE (Hutchinson, ours)"]["bits_per_dim"]
    assert bpd["continuous ELBO"]["bits_per_dim"] > ode - 0.2
    wall = B.digits_wall_time(model, images[:2], seed=1, tolerances={"dopri5": (1e-4,), "ours": (1e-3,)},
                              target=1e-1, quick=True, log=lambda *a: None)
    assert wall["reference_nfe"] == 4 * 19
    assert all(r["max_error"] < 0.1 for r in wall["rows"])
    assert wall["at_target"]["ours"] is not None and wall["time_ratio_ours_to_dopri5"] is not None
