"""The stochastic-sampler metrics against closed forms: energy distance of normals, the Gaussian cross-entropy
difference, and the calibration of the excess cross-entropy's standard error."""
from __future__ import annotations

import math

import pytest
import torch

from sde_diffusion.metrics import Estimate, cross_entropy, energy_distance, excess_cross_entropy

F64 = torch.float64


def _mean_abs_normal(mean: float, std: float) -> float:
    """E|Z| for Z ~ N(mean, std²) (folded normal)."""
    return std * math.sqrt(2 / math.pi) * math.exp(-mean**2 / (2 * std**2)) + mean * math.erf(mean / (std * math.sqrt(2)))


def _energy_normals(m1: float, s1: float, m2: float, s2: float) -> float:
    """D² = 2E|X−Y| − E|X−X'| − E|Y−Y'| with X−Y ~ N(m1−m2, s1²+s2²), X−X' ~ N(0, 2s1²), Y−Y' ~ N(0, 2s2²)."""
    return (2 * _mean_abs_normal(m1 - m2, math.hypot(s1, s2)) - _mean_abs_normal(0.0, math.sqrt(2) * s1)
            - _mean_abs_normal(0.0, math.sqrt(2) * s2))


def _gaussian_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I)."""
    return -0.5 * x.pow(2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def test_energy_distance_of_two_normals_matches_closed_form():
    """N(0, 1) vs N(0.7, 1.5²): unequal scales, so each of the three terms (and the factor 2) matters."""
    g = torch.Generator().manual_seed(0)
    n = 4000
    x = torch.randn(n, 1, generator=g, dtype=F64)
    y = 0.7 + 1.5 * torch.randn(n, 1, generator=g, dtype=F64)
    exact = _energy_normals(0.0, 1.0, 0.7, 1.5)
    assert exact == pytest.approx(0.2700, abs=1e-3)  # 2·1.5455 − 1.1284 − 1.6926
    assert energy_distance(x, y) == pytest.approx(exact, abs=0.03)  # s.e. at n = 4000 ≈ 0.008


def test_energy_distance_is_zero_mean_for_equal_laws():
    """Unbiased U-statistic: over repeats its mean is 0 within 4 standard errors (a V-statistic would be > 0)."""
    g = torch.Generator().manual_seed(1)
    values = torch.tensor([energy_distance(torch.randn(200, 2, generator=g, dtype=F64),
                                           torch.randn(300, 2, generator=g, dtype=F64)) for _ in range(200)])
    z = values.mean() / (values.std() / math.sqrt(len(values)))
    assert abs(float(z)) < 4, (float(values.mean()), float(values.std()))
    assert (values < 0).any()  # unbiased, so it can go negative


def test_energy_distance_blocks_agree_with_one_block(monkeypatch):
    import sde_diffusion.metrics as M

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(301, 3, generator=g), torch.randn(157, 3, generator=g) + 0.2
    whole = energy_distance(x, y)
    monkeypatch.setattr(M, "_BLOCK_ENTRIES", 1000)  # many blocks, with a ragged last one
    assert energy_distance(x, y) == pytest.approx(whole, rel=1e-9)  # cdist rounds per block


@pytest.mark.parametrize("shift, scale", [(0.5, 1.0), (0.0, 0.6), (0.3, 1.4)])
def test_excess_cross_entropy_of_a_gaussian_matches_closed_form(shift, scale):
    """q = N(δ, s² I), p = N(0, I) in d dims: E_q[−log p] − E_p[−log p] = ½ (d δ² + d (s² − 1)); s < 1 makes it negative."""
    d, n = 3, 20000
    g = torch.Generator().manual_seed(3)
    q = shift + scale * torch.randn(n, d, generator=g, dtype=F64)
    p = torch.randn(n, d, generator=g, dtype=F64)
    exact = 0.5 * (d * shift**2 + d * (scale**2 - 1))
    est = excess_cross_entropy(q, _gaussian_log_prob, p)
    assert isinstance(est, Estimate)
    assert abs(est.value - exact) < 4 * est.se, (est, exact)
    assert est.se < 0.05 * max(abs(exact), 0.3)  # precise enough that a factor 2 in the formula fails


def test_excess_cross_entropy_se_is_calibrated():
    """z = (estimate − exact)/se over independent repeats is ≈ N(0, 1): mean ≈ 0, sd ≈ 1 (a se off by 2× gives sd 0.5 or 2)."""
    d, n, m, repeats = 2, 400, 600, 300
    shift, scale = 0.4, 1.2
    exact = 0.5 * (d * shift**2 + d * (scale**2 - 1))
    g = torch.Generator().manual_seed(4)
    z = []
    for _ in range(repeats):
        q = shift + scale * torch.randn(n, d, generator=g, dtype=F64)
        est = excess_cross_entropy(q, _gaussian_log_prob, torch.randn(m, d, generator=g, dtype=F64))
        z.append((est.value - exact) / est.se)
    z = torch.tensor(z)
    assert abs(float(z.mean())) < 0.25, float(z.mean())  # s.e. of the mean of z: 1/√300 ≈ 0.06
    assert 0.85 < float(z.std()) < 1.15, float(z.std())  # s.e. of the sd: ≈ 0.04


def test_excess_cross_entropy_takes_a_precomputed_entropy():
    g = torch.Generator().manual_seed(5)
    q, p = 0.2 + torch.randn(500, 2, generator=g, dtype=F64), torch.randn(700, 2, generator=g, dtype=F64)
    entropy = cross_entropy(p, _gaussian_log_prob)
    assert excess_cross_entropy(q, _gaussian_log_prob, entropy) == pytest.approx(excess_cross_entropy(q, _gaussian_log_prob, p))
    assert entropy.value == pytest.approx(float(-_gaussian_log_prob(p).mean()))


def test_bad_inputs_name_the_argument():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="same dimension"):
        energy_distance(x, torch.randn(10, 3))
    with pytest.raises(ValueError, match="x must have shape"):
        energy_distance(torch.randn(1, 2), x)
    with pytest.raises(ValueError, match="samples contains NaN"):
        cross_entropy(torch.full((4, 2), math.nan), _gaussian_log_prob)
    with pytest.raises(TypeError, match="log_prob must be a callable"):
        cross_entropy(x, 3.0)
    with pytest.raises(ValueError, match="one value per sample"):
        cross_entropy(x, lambda v: v.sum())
    with pytest.raises(ValueError, match="NaN or ±Inf"):
        cross_entropy(x, lambda v: torch.full((v.shape[0],), -math.inf))
    with pytest.raises(TypeError, match="reference_samples must be"):
        excess_cross_entropy(x, _gaussian_log_prob, 1.0)
