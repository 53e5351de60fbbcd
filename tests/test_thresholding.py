"""Clipping of x̂_0: static and dynamic (Imagen) thresholding, off by default, applied to every x̂_0 a
sampler sees, with ε and the score recomputed from the clipped x̂_0."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.data.gmm import eight_gaussians
from sde_diffusion.samplers import REGISTRY, SamplingContext, get
from sde_diffusion.samplers.thresholding import DynamicThreshold, StaticThreshold

from _solvers import F64


EIGHT = eight_gaussians()  # radius 2: x̂_0 leaves [−1, 1] for most of the trajectory


# --------------------------------------------------------------------------------------------
# the transforms
# --------------------------------------------------------------------------------------------
def test_static_threshold_clamps():
    x = torch.linspace(-3, 3, 61, dtype=F64).reshape(1, -1)
    out = StaticThreshold(1.5)(x)
    expected = np.clip(x.numpy(), -1.5, 1.5)
    np.testing.assert_array_equal(out.numpy(), expected)
    inside = torch.tensor([[0.3, -0.7]])
    assert torch.equal(StaticThreshold()(inside), inside)
    with pytest.raises(ValueError):
        StaticThreshold(0.0)


def imagen_dynamic_threshold(x0: np.ndarray, p: float, max_value: float = 1.0) -> np.ndarray:
    """Saharia et al. 2022 (Imagen), written from the paper: per sample, s = the p-quantile of |x̂_0|,
    s = max(s, 1); clip x̂_0 to [−s, s] and divide by s. (``max_value`` m generalises 1: s = max(q, m),
    then rescale by m/s so the range is [−m, m].)"""
    flat = np.abs(x0.reshape(x0.shape[0], -1))
    s = np.maximum(np.quantile(flat, p, axis=1), max_value)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return np.clip(x0, -s, s) / s * max_value


@pytest.mark.parametrize("shape", [(6, 2), (4, 3, 8, 8)])
@pytest.mark.parametrize("p", [0.5, 0.9, 0.995, 1.0])
@pytest.mark.parametrize("max_value", [1.0, 2.5])
def test_dynamic_threshold_is_imagens(shape, p, max_value):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=g, dtype=F64) * torch.tensor([0.3, 1.0, 2.0, 5.0, 0.8, 3.0][: shape[0]], dtype=F64).reshape(
        -1, *([1] * (len(shape) - 1)))
    out = DynamicThreshold(percentile=p, max_value=max_value)(x0)
    np.testing.assert_allclose(out.numpy(), imagen_dynamic_threshold(x0.numpy(), p, max_value), rtol=1e-12, atol=1e-12)
    assert float(out.abs().max()) <= max_value * (1 + 1e-12)
    # a sample already inside the range is left alone
    small = torch.full(shape, 0.1 * max_value, dtype=F64)
    torch.testing.assert_close(DynamicThreshold(percentile=p, max_value=max_value)(small), small)


def test_dynamic_threshold_low_precision():
    x0 = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 3
    out = DynamicThreshold(0.9)(x0)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), imagen_dynamic_threshold(x0.double().numpy(), 0.9), rtol=1e-5, atol=1e-6)
    half = DynamicThreshold(0.9)(x0.bfloat16())  # torch.quantile has no bf16 kernel: upcast inside
    assert half.dtype == torch.bfloat16
    np.testing.assert_allclose(half.float().numpy(), out.numpy(), rtol=0, atol=2e-2)


def test_threshold_arguments_are_validated():
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            DynamicThreshold(percentile=bad)
    with pytest.raises(ValueError):
        DynamicThreshold(max_value=-1.0)
    with pytest.raises(TypeError):
        sd.samplers.DPMSolver(thresholding="dynamic")


# --------------------------------------------------------------------------------------------
# in the samplers
# --------------------------------------------------------------------------------------------
#: a cheap configuration of every registered sampler
CONFIGS = {
    "ddim": dict(steps=8), "ddpm": dict(steps=8), "dpm_solver": dict(steps=6), "unipc": dict(steps=6),
    "heun": dict(steps=5), "dpm_solver_adaptive": dict(rtol=0.05), "unipc_adaptive": dict(rtol=0.05), "adaptive_sde": dict(rtol=0.1, atol=0.05),
    "euler_maruyama": dict(steps=20), "reverse_diffusion": dict(steps=20), "predictor_corrector": dict(steps=10),
    "probability_flow": dict(rtol=1e-3, atol=1e-3), "torchsde": dict(steps=10),
}
VARIANTS = [(name, kw) for name, kw in CONFIGS.items()] + [
    ("dpm_solver", dict(steps=6, prediction="eps")),
    ("dpm_solver", dict(steps=4, order=3, multistep=False)),
    ("dpm_solver", dict(steps=6, order=3, eta=1.0)),
    ("heun", dict(steps=5, s_churn=5.0)),
]


def test_every_sampler_is_configured_here():
    assert set(CONFIGS) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_thresholding_is_off_by_default(name):
    assert get(name).thresholding is None


@pytest.mark.parametrize("name, kw", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_off_means_untouched(name, kw):
    """thresholding=None is the default and leaves the result bit-identical; a clamp that never binds
    only re-derives ε from x̂_0 (float64 round off)."""
    sde = sd.VPSDE()
    model = EIGHT.score_model(sde)

    def run(**extra):
        return get(name, **kw, **extra).sample(model, shape=(8, 2), dtype=F64, generator=torch.Generator().manual_seed(4)).x

    default = run()
    torch.testing.assert_close(run(thresholding=None), default, rtol=0, atol=0)
    torch.testing.assert_close(run(thresholding=StaticThreshold(1e6)), default, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("transform", [StaticThreshold(1.0), DynamicThreshold(0.9, 1.0)], ids=["static", "dynamic"])
@pytest.mark.parametrize("name, kw", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_every_x0_the_sampler_sees_is_clipped(name, kw, transform, monkeypatch):
    sde = sd.VPSDE()
    base = EIGHT.score_model(sde)
    raw, seen = [], []

    def score(x, t):  # a model spy: the unclipped x̂_0 the network implies
        s = base.score(x, t)
        raw.append(float(((x + sde.sigma(t).reshape(-1, 1) ** 2 * s) / sde.alpha(t).reshape(-1, 1)).abs().max()))
        return s

    original = SamplingContext.predict

    def spy(ctx, x, t):
        pred = original(ctx, x, t)
        seen.append((x, t, pred))
        return pred

    monkeypatch.setattr(SamplingContext, "predict", spy)
    model = sd.ScoreModel.from_score_fn(score, sde)
    out = get(name, **kw, thresholding=transform).sample(model, shape=(8, 2), dtype=F64, generator=torch.Generator().manual_seed(4))
    assert max(raw) > 1.5, "the test needs x̂_0 outside the range"
    assert len(seen) == out.nfe
    for x, t, pred in seen:
        assert float(pred.x0.abs().max()) <= 1.0 + 1e-12
        t64 = torch.as_tensor(t, dtype=F64)
        alpha, sigma = sde.alpha(t64).reshape(-1, 1), sde.sigma(t64).reshape(-1, 1)
        torch.testing.assert_close(pred.eps, (x - alpha * pred.x0) / sigma, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(pred.score, -pred.eps / sigma, rtol=1e-10, atol=1e-10)
    if getattr(get(name, **kw), "denoise", True):
        assert float(out.x.abs().max()) <= 1.0 + 1e-12  # the final denoise is clipped too
