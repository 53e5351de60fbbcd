"""Fréchet distance against closed forms and scipy; the digits classifier, quality report and copy check
against real, degraded and copied digits."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from sde_diffusion.bench.digits_quality import (
    DigitsClassifier, _binomial_blur, copy_ratio, nearest_neighbour_distances, quality_report, train_classifier,
)
from sde_diffusion.metrics import frechet_distance, frechet_distance_gaussians, gaussian_moments

N_TRAIN, N_FRESH = 1197, 300  # digits (1797) split by a seed-0 permutation: train | fresh real | holdout (300)


def _random_covariance(d, generator, floor=0.05):
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return a @ a.T / d + floor * torch.eye(d, dtype=torch.float64)


def _random_rotation(d, generator):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


# ---------------------------------------------------------------- Fréchet distance


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_gaussian_fd_equals_closed_form_for_commuting_covariances(d, seed):
    """Σ1 = Q diag(λ1) Qᵀ, Σ2 = Q diag(λ2) Qᵀ: FD = ‖μ1 − μ2‖² + Σ_i (√λ1_i − √λ2_i)²."""
    g = torch.Generator().manual_seed(seed)
    q = _random_rotation(d, g)
    lam1 = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 1e-3
    lam2 = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 1e-3
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    expected = (mu1 - mu2).pow(2).sum() + (lam1.sqrt() - lam2.sqrt()).pow(2).sum()
    got = frechet_distance_gaussians(mu1, q @ torch.diag(lam1) @ q.T, mu2, q @ torch.diag(lam2) @ q.T)
    assert got == pytest.approx(float(expected), rel=1e-9, abs=1e-10)


def test_gaussian_fd_non_commuting_2d_closed_form_and_scipy_peer():
    """2×2: tr((Σ1^½ Σ2 Σ1^½)^½) = √(tr(Σ1Σ2) + 2√(det Σ1 det Σ2)); 6-D: the scipy sqrtm formula of pytorch-fid."""
    s1 = torch.tensor([[2.0, 0.9], [0.9, 0.7]], dtype=torch.float64)
    s2 = torch.tensor([[0.3, -0.2], [-0.2, 1.5]], dtype=torch.float64)
    mu1, mu2 = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    cross = math.sqrt(float(torch.trace(s1 @ s2)) + 2 * math.sqrt(float(torch.det(s1) * torch.det(s2))))
    expected = float((mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2)) - 2 * cross
    assert frechet_distance_gaussians(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)

    g = torch.Generator().manual_seed(1)
    s1, s2 = _random_covariance(6, g), _random_covariance(6, g)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    peer = float((mu1 - mu2).pow(2).sum()) + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean)
    assert frechet_distance_gaussians(mu1, s1, mu2, s2) == pytest.approx(peer, rel=1e-9)


def test_gaussian_fd_of_singular_covariances_is_real_and_exact():
    """Rank-1 covariances (dead feature units): no ε offset needed; N(0, aaᵀ) vs N(0, bbᵀ) with a ⟂ b gives ‖a‖² + ‖b‖²."""
    a, b = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    assert frechet_distance_gaussians(zero, torch.outer(a, a), zero, torch.outer(b, b)) == pytest.approx(13.0, rel=1e-12)
    assert frechet_distance_gaussians(zero, torch.outer(a, a), zero, torch.outer(a, a)) == pytest.approx(0.0, abs=1e-12)


def test_fd_of_large_samples_approaches_population_value():
    """n = 50,000 per side, d = 4, non-commuting Σ: the estimator's sd is 0.03 (measured) on FD ≈ 7; tolerance 0.15."""
    g = torch.Generator().manual_seed(0)
    d, n = 4, 50_000
    s1, s2 = _random_covariance(d, g, 0.1), _random_covariance(d, g, 0.1)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    a = mu1 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    b = mu2 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s2).T
    population = frechet_distance_gaussians(mu1, s1, mu2, s2)
    assert population > 3
    assert abs(frechet_distance(a, b) - population) < 0.15


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 6), n=st.integers(8, 60), m=st.integers(8, 60), seed=st.integers(0, 10_000))
def test_fd_properties_symmetry_identity_translation(d, n, m, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64) * 2
    b = torch.randn(m, d, generator=g, dtype=torch.float64) + 0.5
    shift = torch.randn(d, generator=g, dtype=torch.float64) * 3
    fd_ab = frechet_distance(a, b)
    scale = float(gaussian_moments(a)[1].trace() + gaussian_moments(b)[1].trace())
    assert frechet_distance(b, a) == pytest.approx(fd_ab, rel=1e-9, abs=1e-9 * scale)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6 * scale)
    assert frechet_distance(a + shift, a) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6, abs=1e-6 * scale)
    assert frechet_distance(a + shift, b + shift) == pytest.approx(fd_ab, rel=1e-6, abs=1e-6 * scale)


def test_gaussian_moments_are_mean_and_unbiased_covariance():
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]], dtype=torch.float64)
    mean, cov = gaussian_moments(x)
    assert torch.allclose(mean, torch.tensor([3.0, 2.0], dtype=torch.float64))
    assert torch.allclose(cov, torch.from_numpy(np.cov(x.numpy(), rowvar=False)))


def test_fd_rejects_bad_inputs():
    ok = torch.randn(10, 3)
    with pytest.raises(ValueError, match="feats_a"):
        frechet_distance(torch.randn(1, 3), ok)
    with pytest.raises(ValueError, match="feats_b"):
        frechet_distance(ok, torch.randn(10))
    with pytest.raises(ValueError, match="same feature dimension"):
        frechet_distance(ok, torch.randn(10, 4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(ok, torch.full((10, 3), float("nan")))
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        frechet_distance(torch.randn(10, 3, 2), ok)
    with pytest.raises(TypeError, match="feats_a"):
        frechet_distance(np.ones((10, 3)), ok)
    eye = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance_gaussians(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]), torch.zeros(2), eye)
    with pytest.raises(ValueError, match="s2"):
        frechet_distance_gaussians(torch.zeros(2), eye, torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match="mu2"):
        frechet_distance_gaussians(torch.zeros(2), eye, torch.zeros(3), eye)


# ---------------------------------------------------------------- digits: classifier and report


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32)[:, None]
    labels = torch.tensor(data.target)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, fresh, holdout = perm[:N_TRAIN], perm[N_TRAIN:N_TRAIN + N_FRESH], perm[N_TRAIN + N_FRESH:]
    return {"train": images[train], "train_labels": labels[train], "fresh": images[fresh],
            "holdout": images[holdout], "unseen_labels": labels[perm[N_TRAIN:]], "unseen": images[perm[N_TRAIN:]]}


@pytest.fixture(scope="module")
def clf(digits):
    return train_classifier(digits["train"], digits["train_labels"], seed=0)


def test_classifier_accuracy_on_unseen_digits(digits, clf):
    accuracy = (clf.probs(digits["unseen"]).argmax(dim=-1) == digits["unseen_labels"]).float().mean()
    assert accuracy >= 0.95  # measured 0.985 on these 600 digits with seed 0


def test_features_are_the_penultimate_layer(digits, clf):
    x = digits["fresh"][:50]
    feats, probs = clf.features(x), clf.probs(x)
    assert feats.shape == (50, 32) and probs.shape == (50, 10)
    assert torch.allclose(clf.head(feats).softmax(dim=-1), probs, atol=1e-6)
    assert torch.allclose(probs.sum(dim=-1), torch.ones(50), atol=1e-6)


def test_training_is_deterministic_and_leaves_global_rng_alone(digits):
    x, y = digits["train"][:256], digits["train_labels"][:256]
    state = torch.get_rng_state()
    first = train_classifier(x, y, seed=3, steps=15, outliers_per_batch=8)
    assert torch.equal(torch.get_rng_state(), state)
    again = train_classifier(x, y, seed=3, steps=15, outliers_per_batch=8)
    other = train_classifier(x, y, seed=4, steps=15, outliers_per_batch=8)
    probe = digits["fresh"][:20]
    assert torch.equal(first.features(probe), again.features(probe))
    assert not torch.allclose(first.features(probe), other.features(probe))


def test_save_load_round_trip(tmp_path, digits, clf):
    path = tmp_path / "clf" / "digits_classifier.safetensors"
    clf.save(path)
    loaded = DigitsClassifier.load(path)
    x = digits["fresh"]
    assert torch.equal(loaded.probs(x), clf.probs(x))
    assert torch.equal(loaded.features(x), clf.features(x))
    alien = tmp_path / "alien.safetensors"
    save_file({"w": torch.zeros(2)}, str(alien))
    with pytest.raises(ValueError, match="not a DigitsClassifier"):
        DigitsClassifier.load(alien)


def test_classifier_rejects_bad_inputs(digits, clf):
    with pytest.raises(ValueError, match="x01"):
        clf.probs(torch.rand(4, 8, 8))
    with pytest.raises(TypeError, match="x01"):
        clf.features(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        clf.features(torch.full((4, 1, 8, 8), float("nan")))
    x, y = digits["train"][:10], digits["train_labels"][:10]
    with pytest.raises(ValueError, match="labels"):
        train_classifier(x, y[:9])
    with pytest.raises(ValueError, match="labels"):
        train_classifier(x, y + 10)
    with pytest.raises(TypeError, match="labels"):
        train_classifier(x, y.float())
    with pytest.raises(ValueError, match="steps"):
        train_classifier(x, y, steps=0)
    with pytest.raises(ValueError, match="outliers_per_batch"):
        train_classifier(x, y, outliers_per_batch=-1)


def test_report_on_fresh_real_digits_sits_at_the_floor(digits, clf):
    """Real digits that neither the classifier nor the floor used: fd ≈ floor, high confidence, no copying."""
    fresh = digits["fresh"]
    report = quality_report(fresh, digits["train"], digits["holdout"], clf)
    assert set(report) == {"fd", "fd_floor", "fd_ratio", "confidence", "class_histogram", "copy_ratio", "n"}
    assert report["n"] == N_FRESH
    direct = frechet_distance(clf.features(fresh), clf.features(digits["holdout"]))
    assert report["fd"] == pytest.approx(direct, rel=1e-12)
    assert report["fd_ratio"] == pytest.approx(report["fd"] / report["fd_floor"], rel=1e-12)
    assert 0.6 <= report["fd_ratio"] <= 1.5  # measured 1.05 (one split; fresh/floor = 0.97 over 20 splits)
    assert report["confidence"] >= 0.9       # measured 0.97
    hist = report["class_histogram"]
    assert len(hist) == 10 and sum(hist) == N_FRESH and min(hist) >= 15  # ≈ 30 per class
    assert 0.8 <= report["copy_ratio"] <= 1.25


def test_floor_is_computed_at_the_samples_size(digits, clf):
    """FD is biased upward at small n, so the floor of 60 samples is larger than that of 300 samples."""
    train, holdout = digits["train"], digits["holdout"]
    small = quality_report(digits["fresh"][:60], train, holdout, clf)
    large = quality_report(digits["fresh"], train, holdout, clf)
    assert small["fd_floor"] > 1.5 * large["fd_floor"]
    single = quality_report(digits["fresh"], train, holdout, clf, floor_seed=0, floor_repeats=1)
    subset = train[torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(0))[:N_FRESH]]
    assert single["fd_floor"] == pytest.approx(
        frechet_distance(clf.features(subset), clf.features(holdout)), rel=1e-12)


def test_report_separates_noise_degraded_and_real_digits(digits, clf):
    """Uniform noise ≫ 2× the floor with low confidence; blurred or shifted digits in between, worsening with blur."""
    train, holdout, fresh = digits["train"], digits["holdout"], digits["fresh"]

    def report_of(images):
        return quality_report(images, train, holdout, clf)

    real = report_of(fresh)
    noise = report_of(torch.rand(N_FRESH, 1, 8, 8, generator=torch.Generator().manual_seed(7)))
    assert noise["fd_ratio"] > 20      # measured ≈ 75
    assert noise["confidence"] < 0.5   # measured 0.29; unsmoothed noise is not among the training outliers
    blurred = _binomial_blur(fresh)
    ratios = [report_of((1 - w) * fresh + w * blurred)["fd_ratio"] for w in (0.25, 0.5, 1.0)]
    assert real["fd_ratio"] < 2 < ratios[0] < ratios[1] < ratios[2] < noise["fd_ratio"]
    shifted = report_of(torch.roll(fresh, shifts=1, dims=3))  # one pixel to the right
    assert 2 < shifted["fd_ratio"] < noise["fd_ratio"]
    assert noise["confidence"] < shifted["confidence"] < real["confidence"]


def test_report_rejects_bad_inputs(digits, clf):
    train, holdout = digits["train"], digits["holdout"]
    with pytest.raises(ValueError, match="train01 must hold at least"):
        quality_report(train, holdout, holdout, clf)
    with pytest.raises(TypeError, match="clf"):
        quality_report(holdout, train, holdout, clf=lambda x: x)
    with pytest.raises(ValueError, match="samples01"):
        quality_report(holdout[:, 0], train, holdout, clf)
    with pytest.raises(ValueError, match="floor_repeats"):
        quality_report(holdout, train, holdout, clf, floor_repeats=0)


# ---------------------------------------------------------------- copy check


def test_copy_ratio_of_copies_noisy_copies_and_fresh_digits(digits):
    train, holdout, fresh = digits["train"], digits["holdout"], digits["fresh"]
    assert copy_ratio(train[:200], train, holdout) == 0.0
    assert 0.8 <= copy_ratio(fresh, train, holdout) <= 1.25
    # a copy plus N(0, σ²) pixel noise sits ‖noise‖ ≈ σ√64 from its original, its nearest neighbour
    sigma = 0.02
    noisy = train[:200] + sigma * torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    holdout_scale = float(nearest_neighbour_distances(holdout, train).median())
    ratio = copy_ratio(noisy, train, holdout)
    assert ratio < 0.3
    assert ratio * holdout_scale == pytest.approx(sigma * 8, rel=0.1)


def test_nearest_neighbour_distances_brute_force():
    g = torch.Generator().manual_seed(2)
    q, r = torch.rand(7, 1, 8, 8, generator=g), torch.rand(11, 1, 8, 8, generator=g)
    brute = torch.tensor([min(float((qi - rj).double().norm()) for rj in r) for qi in q], dtype=torch.float64)
    assert torch.allclose(nearest_neighbour_distances(q, r), brute, rtol=1e-12)


def test_copy_ratio_rejects_holdout_inside_train(digits):
    train = digits["train"]
    with pytest.raises(ValueError, match="holdout01 must not repeat train01"):
        copy_ratio(digits["fresh"], train, train[:100])
    with pytest.raises(ValueError, match="train01"):
        copy_ratio(digits["fresh"], train.reshape(-1, 64), digits["holdout"])
