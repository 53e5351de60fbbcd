"""The learnable VP schedule (Kingma et al. 2021, "Variational Diffusion Models") against closed forms.

References: the base class's identities d log α/dt = f, dσ²/dt = 2fσ² + g² by central differences; for
Gaussian data N(μ, diag v) the exact ε-prediction ε*(x, γ) = σ (x − αμ)/(α² v + σ²) (a function of the SNR only),
whose −ELBO is the closed form of tests/test_elbo.py (prior KL + reconstruction + ½ Σ_d log((1 + v S_eps)/(1 + v S_T)),
S = e^{−γ}), which depends on γ(eps) and γ(T) alone (VDM eq. 13); the exact PF-ODE map of a Gaussian.
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import sde_diffusion as sd
from sde_diffusion.data.gmm import GaussianMixture
from sde_diffusion.elbo import continuous_elbo
from sde_diffusion.losses import vdm_loss
from sde_diffusion.model import LOG_SNR_INPUT_RANGE
from sde_diffusion.nets.schedule import MonotoneLogSNR
from sde_diffusion.training.config import build_sde, sde_spec

F64 = torch.float64
Z = 4.0  # z-score bound of Monte-Carlo comparisons
MEAN, VAR = torch.tensor([0.5, -0.3], dtype=F64), torch.tensor([0.09, 0.5], dtype=F64)
GAUSS = GaussianMixture([MEAN.tolist()], [VAR.tolist()])


def bent(sde: sd.LearnedVPSDE, centre: float = 0.3, steepness: float = 25.0) -> sd.LearnedVPSDE:
    """A copy whose interior is far from linear: almost all of γ's rise happens around u = centre."""
    other = copy.deepcopy(sde)
    s = other.schedule
    with torch.no_grad():
        s.linear.fill_(-4.0)  # a ≈ 0.018
        w = torch.full_like(s.feature_weight, steepness)
        s.feature_weight.copy_(w + torch.log(-torch.expm1(-w)))
        s.feature_bias.copy_(-w * (2 * (centre + 0.05 * torch.linspace(-1, 1, s.width, dtype=F64)) - 1))
        s.feature_scale.fill_(1.0)
    return other


class ExactEps(nn.Module):
    """ε*(x, γ) for data N(MEAN, diag VAR), fed the "log_snr" input c (differentiable in c and x)."""

    def forward(self, x, c):
        lo, hi = LOG_SNR_INPUT_RANGE
        gamma = (lo + (hi - lo) * c.double())[:, None]
        a2, s2 = torch.sigmoid(-gamma), torch.sigmoid(gamma)
        return (s2.sqrt() * (x.double() - a2.sqrt() * MEAN) / (a2 * VAR + s2)).to(x.dtype)


def exact_model(sde) -> sd.ScoreModel:
    model = sd.ScoreModel(ExactEps(), sde, prediction="eps")
    assert model.time_input == "log_snr"  # the default on a LearnedVPSDE
    return model


def closed_form_nelbo(gamma_eps: float, gamma_T: float) -> float:
    """E[−ELBO] of the exact model on N(MEAN, diag VAR) for a VP schedule with these end points."""
    s_eps, s_T = math.exp(-gamma_eps), math.exp(-gamma_T)
    a2 = s_T / (1 + s_T)
    prior = 0.5 * float(((1 - a2) + a2 * (VAR + MEAN**2) - 1 - math.log(1 - a2)).sum())
    v_eps = 1 / s_eps
    recon = 0.5 * len(VAR) * math.log(2 * math.pi * v_eps) + float((VAR / (1 + VAR * s_eps)).sum()) / (2 * v_eps)
    diffusion = 0.5 * float(torch.log((1 + VAR * s_eps) / (1 + VAR * s_T)).sum())
    return prior + recon + diffusion


def ends(sde) -> tuple:
    return float(sde.gamma_min.detach()), float(sde.gamma_max.detach())


# ----- the SDE -----
@pytest.mark.parametrize("shape", ["initial", "bent"])
def test_schedule_identities_and_end_points(shape):
    sde = sd.LearnedVPSDE(width=64)
    sde = bent(sde) if shape == "bent" else sde
    t = torch.linspace(0.02, 0.98, 49, dtype=F64)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-14)
    h = 1e-6
    dlog_alpha = (sde.alpha(t + h).log() - sde.alpha(t - h).log()) / (2 * h)
    dvar = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    assert torch.allclose(sde.f(t), dlog_alpha, rtol=1e-6, atol=1e-8)
    assert torch.allclose(sde.g2(t), dvar - 2 * sde.f(t) * sigma**2, rtol=1e-6, atol=1e-8)
    assert float(sde.g2(t).min()) > 0
    # γ = −2λ, γ' its derivative (autograd), the end points exact, λ strictly decreasing
    tt = t.clone().requires_grad_(True)
    (dgamma,) = torch.autograd.grad(sde.gamma(tt).sum(), tt)
    assert torch.allclose(sde.gamma_prime(t), dgamma, rtol=1e-10)
    assert torch.allclose(sde.gamma(t).detach(), -2 * sde.log_snr(t), atol=1e-12)
    edge = torch.tensor([sde.eps, sde.T], dtype=F64)
    assert sde.gamma(edge).detach().tolist() == pytest.approx(list(ends(sde)), abs=1e-12)
    assert ends(sde) == pytest.approx((-2 * float(sd.VPSDE().log_snr(1e-3)), -2 * float(sd.VPSDE().log_snr(1.0))), abs=1e-12)
    lam = sde.log_snr(torch.linspace(0, 1, 2001, dtype=F64))
    assert (lam[1:] < lam[:-1]).all()
    assert torch.allclose(sde.t_of_log_snr(sde.log_snr(t)), t, atol=1e-10)


def test_interior_and_end_point_parameters():
    sde = sd.LearnedVPSDE(width=16)
    interior, endpoints = sde.interior_parameters(), sde.endpoint_parameters()
    assert {id(p) for p in interior} | {id(p) for p in endpoints} == {id(p) for p in sde.parameters()}
    assert not {id(p) for p in interior} & {id(p) for p in endpoints}
    r, _ = sde.gamma_shape(torch.tensor([0.1, 0.5, 0.9], dtype=F64))
    assert all(g is None or float(g.abs().max()) == 0 for g in torch.autograd.grad(r.sum(), endpoints, allow_unused=True))
    with pytest.raises(ValueError, match="gamma_min"):
        MonotoneLogSNR(3.0, -3.0)
    with pytest.raises(TypeError, match="like"):
        sd.LearnedVPSDE(like="vp")
    ve = sd.VESDE(sigma_min=0.01, sigma_max=50.0)  # eps = 1e-5
    assert ends(sd.LearnedVPSDE(ve)) == pytest.approx((2 * math.log(0.01 * 5000 ** 1e-5), 2 * math.log(50.0)), rel=1e-12)


def test_sampler_and_likelihood_run_unchanged():
    """On a bent learned schedule: DPM-Solver from x_T lands on the exact PF-ODE map; log_likelihood is the closed form."""
    sde = bent(sd.LearnedVPSDE(width=64))
    x_T = sde.prior_sample((64, 2), torch.Generator().manual_seed(0), dtype=F64)
    out = sd.samplers.DPMSolver(steps=40, order=3, denoise=False).sample(GAUSS.score_model(sde), x_T=x_T)
    exact = GAUSS.flow(x_T, sde.T, sde.eps, sde)
    assert float((out.x - exact).abs().max()) < 2e-3

    def score(x, t):  # the exact score, differentiable in x (the likelihood's divergence needs it)
        a, s = sde._log_alpha(t.double()).exp()[:, None], sde._log_sigma(t.double()).exp()[:, None]
        return -(x - a * MEAN) / (a**2 * VAR + s**2)

    x = GAUSS.sample(16, torch.Generator().manual_seed(1), dtype=F64)
    res = sd.log_likelihood(sd.ScoreModel.from_score_fn(score, sde), x, rtol=1e-6, atol=1e-6)
    gap = sde.prior_logp(res.z) - GAUSS.marginal_log_prob(res.z, sde.T, sde)
    assert float((res.logp - GAUSS.marginal_log_prob(x, sde.eps, sde) - gap).abs().max()) < 1e-3
    assert float(res.delta_logp.abs().min()) > 0.5


# ----- VDM eq. 13: the ELBO depends on the end points only -----
def test_elbo_integral_is_invariant_to_the_interior():
    """½ ∫ γ'(t) Σ_d v_d S/(1 + v_d S) dt (S = e^{−γ}) by quadrature is the closed form for any interior."""
    base = sd.LearnedVPSDE(width=64)
    t = torch.linspace(base.eps, base.T, 40001, dtype=F64)
    g_eps, g_T = ends(base)
    closed = 0.5 * float(torch.log((1 + VAR * math.exp(-g_eps)) / (1 + VAR * math.exp(-g_T))).sum())
    integrands = []
    for sde in (base, bent(base, 0.3), bent(base, 0.8, 40.0)):
        gamma, dgamma = sde.gamma(t).detach(), sde.gamma_prime(t).detach()
        snr = torch.exp(-gamma)[:, None]
        integrand = 0.5 * dgamma * (VAR * snr / (1 + VAR * snr)).sum(1)
        integrands.append(integrand)
        assert float(torch.trapezoid(integrand, t)) == pytest.approx(closed, rel=1e-6)
    assert float((integrands[1] - integrands[2]).abs().max()) > 1.0  # the interiors really differ


def test_monte_carlo_elbo_invariant_to_interior_and_not_to_end_points():
    base = sd.LearnedVPSDE(width=32)
    x0 = GAUSS.sample(40000, torch.Generator().manual_seed(2), dtype=F64)
    moved = copy.deepcopy(base)
    with torch.no_grad():
        moved.schedule.gamma_max.fill_(-2.0)  # SNR(T) = e²: the prior KL grows
    spreads = {}
    for name, sde in (("initial", base), ("bent", bent(base)), ("moved end", moved)):
        with torch.no_grad():
            loss = vdm_loss(exact_model(sde), x0, generator=torch.Generator().manual_seed(3))
        se = float(loss.std()) / math.sqrt(len(loss))
        expected = closed_form_nelbo(*ends(sde))
        assert abs(float(loss.mean()) - expected) < Z * se, (name, float(loss.mean()), expected, se)
        spreads[name] = (float(loss.mean()), se, float(loss.var()))
    assert spreads["bent"][2] > 3 * spreads["initial"][2]  # the interior changes the variance, not the mean
    mean_moved, se_moved, _ = spreads["moved end"]
    assert abs(mean_moved - closed_form_nelbo(*ends(base))) > 2 * Z * se_moved  # an end point changes the mean
    # continuous_elbo (λ uniform) agrees with vdm_loss (t uniform) on the learned SDE
    elbo = continuous_elbo(exact_model(base), x0[:1000], t_samples=8, generator=torch.Generator().manual_seed(4))
    se = float(elbo.total.std()) / math.sqrt(1000)
    assert abs(float(elbo.total.mean()) - closed_form_nelbo(*ends(base))) < Z * se


def test_vdm_loss_on_a_fixed_sde_is_the_continuous_elbo():
    """On VPSDE (γ' = g²/σ²) the t-uniform estimator has the closed-form mean, with a larger variance than λ-uniform."""
    sde = sd.VPSDE()
    x0 = GAUSS.sample(20000, torch.Generator().manual_seed(5), dtype=F64)
    model = GAUSS.score_model(sde)
    loss = vdm_loss(model, x0, t_sampling="uniform", generator=torch.Generator().manual_seed(6))
    g_eps, g_T = (-2 * float(sde.log_snr(t)) for t in (sde.eps, sde.T))
    se = float(loss.std()) / math.sqrt(len(loss))
    assert abs(float(loss.mean()) - closed_form_nelbo(g_eps, g_T)) < Z * se
    with pytest.raises(ValueError, match="variance_trick"):
        vdm_loss(model, x0[:4], variance_trick=True)
    with pytest.raises(ValueError, match="t must lie"):
        vdm_loss(model, x0[:4], t=torch.zeros(4, dtype=F64))


# ----- VDM's variance trick -----
def test_variance_trick_gradients():
    """One backward of the trick's loss: ∇E[L] for the end points, ∇E[L²] for the interior (autograd and finite differences)."""
    sde = bent(sd.LearnedVPSDE(width=32), 0.4, 8.0)
    model = exact_model(sde)
    x0 = GAUSS.sample(256, torch.Generator().manual_seed(7), dtype=F64)

    def loss(trick):
        return vdm_loss(model, x0, variance_trick=trick, generator=torch.Generator().manual_seed(8))

    vdm_loss(model, x0, variance_trick=True, generator=torch.Generator().manual_seed(8)).mean().backward()
    tricked = [p.grad.clone() for p in sde.parameters()]
    plain = loss(False)
    interior, endpoints = sde.interior_parameters(), sde.endpoint_parameters()
    want_interior = torch.autograd.grad((plain**2).mean(), interior, retain_graph=True)
    want_ends = torch.autograd.grad(plain.mean(), endpoints)
    by_id = dict(zip(map(id, sde.parameters()), tricked))
    for p, want in zip(interior + endpoints, want_interior + want_ends):
        assert torch.allclose(by_id[id(p)], want, rtol=1e-9, atol=1e-12)
    assert float(want_interior[0].abs()) > 0 and float(want_ends[0].abs()) > 0
    # the interior gradient against a central difference of mean(L²) in one coordinate (same draws)
    p, k, h = sde.schedule.feature_bias, 3, 1e-5
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            p[k] += sign * h
            values.append(float((loss(False) ** 2).mean()))
            p[k] -= sign * h
    assert by_id[id(p)][k].item() == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-4)


def test_variance_trick_lowers_the_variance_and_keeps_the_mean():
    sde = bent(sd.LearnedVPSDE(width=32))
    model = exact_model(sde)
    before_ends = ends(sde)
    x_eval = GAUSS.sample(20000, torch.Generator().manual_seed(9), dtype=F64)

    def measured():
        with torch.no_grad():
            loss = vdm_loss(model, x_eval, t_sampling="uniform", generator=torch.Generator().manual_seed(10))
        return float(loss.mean()), float(loss.std()) / math.sqrt(len(loss)), float(loss.var())

    mean0, se0, var0 = measured()
    optimizer = torch.optim.Adam(sde.interior_parameters(), lr=0.1)
    g = torch.Generator().manual_seed(11)
    for _ in range(40):
        optimizer.zero_grad()
        x0 = GAUSS.sample(512, g, dtype=F64)
        vdm_loss(model, x0, variance_trick=True, generator=g).mean().backward()
        optimizer.step()
    mean1, se1, var1 = measured()
    assert ends(sde) == before_ends
    assert var1 < var0 / 3, (var0, var1)
    expected = closed_form_nelbo(*before_ends)
    assert abs(mean0 - expected) < Z * se0 and abs(mean1 - expected) < Z * se1


# ----- checkpoints and training -----
def test_spec_round_trip_is_exact():
    sde = bent(sd.LearnedVPSDE(width=16))
    with torch.no_grad():
        sde.schedule.gamma_min.fill_(-7.25)
    spec = json.loads(json.dumps(sde_spec(sde)))
    again = build_sde(spec)
    t = torch.linspace(0, 1, 101, dtype=F64)
    for name in ("alpha", "sigma", "f", "g2"):
        assert torch.equal(getattr(again, name)(t), getattr(sde, name)(t))
    assert sde_spec(again) == spec
    fresh = build_sde({"name": "learned", "width": 16})
    assert torch.equal(fresh.alpha(t), sd.LearnedVPSDE(width=16).alpha(t))
    with pytest.raises(ValueError, match="unknown keys"):
        build_sde({"name": "learned", "beta_min": 0.1})
    with pytest.raises(ValueError, match="width"):
        sd.LearnedVPSDE(width=8).load_spec(spec)


def test_trainer_trains_the_schedule_and_checkpoints_it(tmp_path):
    data = sd.data.Dataset(x=GAUSS.sample(512, torch.Generator().manual_seed(12)), name="gauss")
    sde = sd.LearnedVPSDE(width=32)
    start = copy.deepcopy(sde.schedule.state_dict())
    torch.manual_seed(0)
    model = sd.ScoreModel(sd.nets.MLP(dim=2, hidden=32, depth=1), sde)
    cfg = sd.training.TrainConfig(steps=6, batch_size=64, lr=1e-2, warmup=0, weighting="likelihood", progress=False,
                                  checkpoint_every=3, log_every=3, sample_every=0, sample_n=8, sample_steps=2)
    with pytest.raises(ValueError, match="likelihood"):
        sd.training.Trainer(model, data, sd.training.TrainConfig(weighting="eps"))
    trainer = sd.training.Trainer(model, data, cfg, out_dir=tmp_path / "run")
    trainer.fit()
    moved = [name for name, p in sde.schedule.state_dict().items() if not torch.equal(p, start[name])]
    assert set(moved) == set(start)  # end points and interior all trained
    ckpt = sd.training.load_checkpoint(tmp_path / "run")
    assert ckpt.model.time_input == "log_snr"
    t = torch.linspace(0, 1, 51, dtype=F64)
    assert torch.equal(ckpt.model.sde.alpha(t), sde.alpha(t)) and torch.equal(ckpt.model.sde.sigma(t), sde.sigma(t))
    # resuming from the middle checkpoint continues the schedule exactly
    (tmp_path / "half").mkdir()
    import shutil

    shutil.copytree(tmp_path / "run" / "checkpoint-0000003", tmp_path / "half" / "checkpoint-0000003")
    torch.manual_seed(0)
    again = sd.ScoreModel(sd.nets.MLP(dim=2, hidden=32, depth=1), sd.LearnedVPSDE(width=32))
    resumed = sd.training.Trainer(again, data, cfg, out_dir=tmp_path / "half", resume=True)
    assert resumed.step == 3
    resumed.fit()
    assert torch.equal(again.sde.alpha(t), sde.alpha(t))


def test_cli_train_learned(tmp_path, capsys):
    from sde_diffusion.cli import main

    out, config_file = tmp_path / "run", tmp_path / "small.json"
    config_file.write_text(json.dumps({"train": {"sample_n": 16, "sample_steps": 2}}))
    assert main(["train", "--data", "moons", "--sde", "learned", "--steps", "3", "--batch-size", "32", "--config",
                 str(config_file), "--checkpoint-every", "0", "--no-progress", "--out", str(out)]) == 0
    config = json.loads(next(out.glob("checkpoint-*/config.json")).read_text())
    assert config["train"]["weighting"] == "likelihood" and config["model"]["sde"]["name"] == "learned"
    assert config["model"]["sde"]["weights"]["gamma_min"] != ends(sd.LearnedVPSDE())[0]
    assert main(["train", "--data", "moons", "--sde", "learned", "--weighting", "eps", "--steps", "3",
                 "--no-progress", "--out", str(tmp_path / "bad")]) == 2
    assert "--weighting must be likelihood" in capsys.readouterr().err


@pytest.mark.slow
def test_learned_schedule_benchmark_quick(tmp_path):
    from sde_diffusion.bench import learned_schedule

    report = learned_schedule.run(learned_schedule.build_parser().parse_args(["--quick", "--out", str(tmp_path)]),
                                  "test", log=lambda *_: None)
    assert {(r["training"], r["estimator"]) for r in report["rows"]} == {
        (run, est) for run in learned_schedule.RUNS for est in learned_schedule.ESTIMATORS}
    assert all(math.isfinite(r["bits_per_dim"]) and r["variance"] > 0 for r in report["rows"])
    assert (tmp_path / "learned_schedule.md").is_file() and (tmp_path / "learned_schedule.png").is_file()
