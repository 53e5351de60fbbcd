"""Every torchdiffeq method solves the probability-flow ODE: adaptive ones to their tolerance, fixed-grid
ones on the sampler's grid; NFE is the number of network evaluations the sampler made."""
import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.samplers.probability_flow import ADAPTIVE_METHODS, FIXED_GRID_METHODS, ProbabilityFlowODE

F64 = torch.float64
SDE = sd.VPSDE()
GAUSS = sd.data.GaussianMixture([[0.4, -0.3]], [[[0.5, 0.1], [0.1, 0.2]]])


def _counted_model():
    base = GAUSS.score_model(SDE)
    calls = []

    def score(x, t):
        calls.append(1)
        return base.score(x, t)

    return sd.ScoreModel.from_score_fn(score, SDE), calls


def _x_T():
    return SDE.prior_sample((64, 2), torch.Generator().manual_seed(0), dtype=F64)


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_adaptive_method_meets_its_tolerance(method):
    options = {"solver": "RK45"} if method == "scipy_solver" else None
    model, calls = _counted_model()
    x_T = _x_T()
    out = ProbabilityFlowODE(method=method, rtol=1e-7, atol=1e-7, denoise=False, options=options).sample(model, x_T=x_T)
    exact = GAUSS.flow(x_T, SDE.T, SDE.eps, SDE)
    assert float((out.x - exact).abs().max()) < 1e-3
    assert out.nfe == len(calls) > 10
    # a looser tolerance is cheaper and less accurate
    loose = ProbabilityFlowODE(method=method, rtol=1e-3, atol=1e-3, denoise=False, options=options).sample(model, x_T=x_T)
    assert loose.nfe < out.nfe
    assert float((loose.x - exact).abs().max()) > float((out.x - exact).abs().max())


@pytest.mark.parametrize("method", FIXED_GRID_METHODS)
def test_fixed_grid_method_converges_on_the_grid(method):
    model, calls = _counted_model()
    x_T = _x_T()
    exact = GAUSS.flow(x_T, SDE.T, SDE.eps, SDE)
    errors = []
    for steps in (50, 200):
        out = ProbabilityFlowODE(method=method, steps=steps, grid="log_snr", denoise=False).sample(model, x_T=x_T)
        assert out.times.numel() == steps + 1  # the grid it stepped on
        errors.append(float((out.x - exact).pow(2).mean().sqrt()))
    assert errors[1] < 0.5 * errors[0], errors  # at least first order: 4× the steps, under half the error
    assert errors[1] < 5e-2
    calls.clear()
    out = ProbabilityFlowODE(method=method, steps=50, grid="log_snr").sample(model, x_T=x_T)
    assert out.nfe == len(calls)
