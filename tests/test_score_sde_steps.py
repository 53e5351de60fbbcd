"""Pin the reverse-time formulas to score_sde's published equations, step for step with the same noise:
the reverse SDE drift f x − g² s (``sde_lib.SDE.reverse``), the ``ReverseDiffusionPredictor`` and the
``LangevinCorrector`` (step size ε = 2 α (snr ‖z‖/‖s‖)², α = 1 − β_i on VP, 1 on VE). Halving g² or the
factor 2 in ε fails these tests."""
from __future__ import annotations

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.samplers.base import SamplingContext, intervals
from sde_diffusion.samplers.predictor_corrector import langevin_step
from sde_diffusion.samplers.reverse_diffusion import reverse_diffusion_step

F64 = torch.float64


def _score(x, t):
    """A smooth non-trivial score field (so the g² term is not confounded with the f term)."""
    return -x * (1.0 + t.reshape(-1, 1)) + torch.sin(3 * x)


@pytest.mark.parametrize("t", [0.05, 0.4, 0.93])
def test_reverse_and_probability_flow_drifts_match_score_sde(t):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=F64)
    s = torch.randn(6, 3, generator=g, dtype=F64)
    tt = torch.full((6,), t, dtype=F64)
    # VP (score_sde sde_lib.VPSDE.sde): drift −½ β x, diffusion √β, β = β_min + t (β_max − β_min)
    beta = 0.1 + t * (20.0 - 0.1)
    vp = sd.VPSDE(0.1, 20.0)
    torch.testing.assert_close(vp.reverse_drift(x, tt, s), -0.5 * beta * x - beta * s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vp.probability_flow_drift(x, tt, s), -0.5 * beta * x - 0.5 * beta * s, rtol=1e-12, atol=1e-12)
    # VE (sde_lib.VESDE.sde): drift 0, diffusion σ(t) √(2 log(σ_max/σ_min))
    ve = sd.VESDE(0.01, 50.0)
    g2 = (0.01 * (50.0 / 0.01) ** t) ** 2 * 2 * math.log(50.0 / 0.01)
    torch.testing.assert_close(ve.reverse_drift(x, tt, s), -g2 * s, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ve.probability_flow_drift(x, tt, s), -0.5 * g2 * s, rtol=1e-10, atol=1e-10)


def _context(sde, seed):
    model = sd.ScoreModel.from_score_fn(_score, sde)
    return SamplingContext(model, None, torch.Generator().manual_seed(seed))


def test_reverse_diffusion_predictor_matches_score_sde_on_ddpm_steps():
    """score_sde: x ← x − [f − G² s] + G z with f = (√(1 − β_i) − 1) x, G = √β_i (VPSDE.discretize)."""
    sde = sd.DiscreteVPSDE.linear(1000)
    ts = torch.tensor([0.600, 0.599, 0.598], dtype=F64)  # DDPM steps i = 599, 598, 597 at t_i = (i + 1)/N
    ivs = intervals(sde, ts)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ctx, noise = _context(sde, 5), torch.Generator().manual_seed(5)
    ours, ref = x.clone(), x.clone()
    for iv, i in zip(ivs, (599, 598)):
        ours = reverse_diffusion_step(ctx, ours, iv)
        beta = float(sde.betas[i])
        score = _score(ref, torch.full((8,), iv.t, dtype=F64))
        f, G = (math.sqrt(1 - beta) - 1) * ref, math.sqrt(beta)
        ref = ref - (f - G**2 * score) + G * torch.randn(ref.shape, generator=noise, dtype=F64)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["ve", "ddpm"])
def test_langevin_corrector_matches_score_sde(kind):
    """score_sde LangevinCorrector: ε = (snr ‖z‖/‖s‖)² · 2 α (batch-mean norms), x ← x + ε s + √(2ε) z."""
    sde = sd.VESDE(0.01, 50.0) if kind == "ve" else sd.DiscreteVPSDE.linear(1000)
    ts = torch.tensor([0.300, 0.299], dtype=F64)
    iv = intervals(sde, ts)[0]
    alpha = 1.0 if kind == "ve" else 1 - float(sde.betas[299])  # score_sde: sde.alphas[timestep], 1 for VE
    snr = 0.16
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    ours = x.clone()
    ctx, noise = _context(sde, 9), torch.Generator().manual_seed(9)
    ref = x.clone()
    for _ in range(3):
        ours = langevin_step(ctx, ours, iv, snr)
        grad = _score(ref, torch.full((16,), iv.t, dtype=F64))
        z = torch.randn(ref.shape, generator=noise, dtype=F64)
        grad_norm = torch.linalg.norm(grad.reshape(16, -1), dim=-1).mean()
        noise_norm = torch.linalg.norm(z.reshape(16, -1), dim=-1).mean()
        step = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha
        ref = ref + step * grad + torch.sqrt(step * 2) * z
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
