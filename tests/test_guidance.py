"""Classifier-free and classifier guidance against exact ground truth: a labelled Gaussian mixture.

For a GMM whose components carry classes, every guided quantity is known in closed form under any linear
SDE: p_t(x | y) is the noised sub-mixture of class y, p_t(y | x) is Bayes' rule over the noised components.
So

* CFG at scale w must equal −σ[s_u + w (s_c − s_u)] with s_c, s_u the exact conditional / unconditional scores;
* classifier guidance with the exact classifier at scale 1 must equal the exact conditional score (Bayes);
* guided samples of class c must be samples of the class-c mixture (MMD against a measured noise floor);
* at scale w > 1 the score is that of the tilted density p_t(x | y)^w p_t(x)^{1−w}; a sampler that equilibrates
  at each noise level (predictor–corrector with Langevin correction) reproduces its moments at small t,
  while ODE/SDE samplers without correction concentrate further than the tilted density (Bradley & Nakkiran
  2024, "Classifier-Free Guidance is a Predictor-Corrector"; Chidambaram et al. 2024) — both are checked.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion.data import GaussianMixture
from sde_diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance
from sde_diffusion.metrics import mmd
from sde_diffusion.samplers.thresholding import DynamicThreshold, StaticThreshold

F64 = torch.float64
#: the class whose samples are drawn in the sampling tests
CLASS = 2


def labelled_gmm() -> GaussianMixture:
    """2-D, four anisotropic components in three classes; class 2 has two components (a grouped class)."""
    means = [[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0], [2.5, -0.5]]
    covs = [[[0.30, 0.10], [0.10, 0.20]], [[0.15, -0.05], [-0.05, 0.25]], [[0.40, 0.00], [0.00, 0.10]],
            [[0.10, 0.00], [0.00, 0.20]]]
    return GaussianMixture(means, covs, [0.3, 0.3, 0.25, 0.15], labels=[0, 1, 2, 2])


@pytest.fixture(scope="module")
def sde():
    return sd.VPSDE()


@pytest.fixture(scope="module")
def gmm():
    return labelled_gmm()


@pytest.fixture(scope="module")
def points():
    """Noised points at mixed times, float64, with mixed labels (including the null label 3)."""
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(64, 2, generator=g, dtype=F64)
    t = 0.05 + 0.95 * torch.rand(64, generator=g, dtype=F64)
    y = torch.randint(0, 3, (64,), generator=g)
    return x, t, y


def exact_conditional(gmm, x, t, y, sde):
    """∇ log p_t(x | y) row by row from the sub-mixture (an independent route to the same quantity)."""
    return torch.cat([gmm.conditional(int(c)).score(x[i:i + 1], t[i:i + 1], sde) for i, c in enumerate(y)])


# ----------------------------------------------------------------------------------------------------------
# the exact conditional pieces of the mixture
# ----------------------------------------------------------------------------------------------------------
def test_class_log_prob_is_bayes_rule(gmm, sde, points):
    x, t, _ = points
    log_py = gmm.class_log_prob(x, t, sde)
    # Bayes with the class sub-mixtures' own marginals: log π_c + log p_t(x | c) − log p_t(x)
    expected = torch.stack([gmm.class_weights[c].log() + gmm.conditional(c).marginal_log_prob(x, t, sde)
                            for c in range(3)], 1) - gmm.marginal_log_prob(x, t, sde)[:, None]
    torch.testing.assert_close(log_py, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(log_py.exp().sum(1), torch.ones(64, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(gmm.class_weights, torch.tensor([0.3, 0.3, 0.4], dtype=F64))


def test_conditional_mixture_and_score_model(gmm, sde, points):
    x, t, y = points
    sub = gmm.conditional(2)
    torch.testing.assert_close(sub.weights, torch.tensor([0.25, 0.15], dtype=F64) / 0.4)
    torch.testing.assert_close(sub.means, gmm.means[2:])
    model = gmm.conditional_score_model(sde)
    assert model.prediction == "score"
    torch.testing.assert_close(model.score(x, t, y=y), exact_conditional(gmm, x, t, y, sde), rtol=1e-12, atol=1e-12)
    null = torch.full_like(y, gmm.null_label)
    torch.testing.assert_close(model.score(x, t, y=null), gmm.score(x, t, sde), rtol=1e-12, atol=1e-12)


def test_bad_labels_are_rejected(gmm, sde):
    with pytest.raises(ValueError, match="labels must have shape"):
        GaussianMixture([[0.0], [1.0]], [1.0, 1.0], labels=[0])
    with pytest.raises(ValueError, match="every class"):
        GaussianMixture([[0.0], [1.0]], [1.0, 1.0], labels=[0, 2])
    with pytest.raises(TypeError, match="labels must be integers"):
        GaussianMixture([[0.0], [1.0]], [1.0, 1.0], labels=[0.0, 1.0])
    with pytest.raises(ValueError, match="no classes"):
        GaussianMixture([[0.0], [1.0]], [1.0, 1.0]).conditional(0)
    with pytest.raises(ValueError, match="y must be a class"):
        gmm.conditional(3)
    model = gmm.conditional_score_model(sde)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r'model_kwargs\["y"\]'):
        model.score(x, 0.5)
    with pytest.raises(ValueError, match=r"lie in 0…3"):
        model.score(x, 0.5, y=torch.tensor([0, 4]))


# ----------------------------------------------------------------------------------------------------------
# classifier-free guidance
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5, -0.5])
def test_cfg_is_the_closed_form(gmm, sde, points, scale):
    x, t, y = points
    guided = ClassifierFreeGuidance(gmm.conditional_score_model(sde), scale=scale, null_label=gmm.null_label)
    s_c, s_u = exact_conditional(gmm, x, t, y, sde), gmm.score(x, t, sde)
    sigma = sde.sigma(t)[:, None]
    expected_eps = (-sigma * s_u) + scale * ((-sigma * s_c) - (-sigma * s_u))
    torch.testing.assert_close(guided.eps(x, t, y=y), expected_eps, rtol=1e-6, atol=1e-9)
    if scale == 1.0:
        torch.testing.assert_close(guided.score(x, t, y=y), s_c, rtol=1e-6, atol=1e-9)
    if scale == 0.0:
        torch.testing.assert_close(guided.score(x, t, y=y), s_u, rtol=1e-6, atol=1e-9)
    # x̂_0 follows from the guided ε (Tweedie's relation with the guided score)
    alpha = sde.alpha(t)[:, None]
    torch.testing.assert_close(guided.x0(x, t, y=y), (x - sigma * expected_eps) / alpha, rtol=1e-6, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(-3.0, 8.0), t=st.floats(0.02, 1.0), label=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_cfg_score_is_the_gradient_of_the_tilted_density(scale, t, label, seed):
    """s̃ = ∇_x [w log p_t(x | y) + (1 − w) log p_t(x)], the gradient taken by autograd of the exact noised
    log-densities: a route independent of the analytic scores."""
    gmm, sde = labelled_gmm(), sd.VPSDE()
    x = 2.0 * torch.randn(8, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    guided = ClassifierFreeGuidance(gmm.conditional_score_model(sde), scale=scale, null_label=gmm.null_label)
    score = guided.score(x, t, y=torch.full((8,), label))
    x_in = x.clone().requires_grad_(True)
    log_tilted = (scale * gmm.conditional(label).marginal_log_prob(x_in, t, sde)
                  + (1 - scale) * gmm.marginal_log_prob(x_in, t, sde)).sum()
    (expected,) = torch.autograd.grad(log_tilted, x_in)
    torch.testing.assert_close(score, expected, rtol=1e-6, atol=1e-8)


class CountingConditional:
    """The exact conditional score, counting calls and recording the batch each call saw."""

    def __init__(self, gmm, sde):
        self.model, self.calls = gmm.conditional_score_model(sde), []

    def __call__(self, x, t, y):
        self.calls.append((x.shape[0], y.clone(), t.clone()))
        return self.model.net.fn(x, t, y=y)


def test_cfg_is_one_batched_inner_call(gmm, sde, points):
    x, t, y = points
    inner = CountingConditional(gmm, sde)
    guided = ClassifierFreeGuidance(sd.ScoreModel.from_score_fn(inner, sde), scale=3.0, null_label=3)
    guided.eps(x[:5], t[:5], y=y[:5])
    assert len(inner.calls) == 1
    batch, y_seen, t_seen = inner.calls[0]
    assert batch == 10
    assert y_seen.tolist() == y[:5].tolist() + [3] * 5
    torch.testing.assert_close(t_seen, torch.cat([t[:5], t[:5]]))
    # inside a sampler: one inner call per counted NFE
    inner.calls.clear()
    out = S.DPMSolver(steps=10).sample(guided, shape=(7, 2), generator=torch.Generator().manual_seed(1),
                                       model_kwargs={"y": torch.full((7,), CLASS)})
    assert out.nfe == len(inner.calls) == 11
    assert all(c[0] == 14 for c in inner.calls)


def test_cfg_interval(gmm, sde, points):
    x, t, y = points
    conditional = gmm.conditional_score_model(sde)
    full = ClassifierFreeGuidance(conditional, scale=4.0, null_label=3)
    inner = CountingConditional(gmm, sde)
    windowed = ClassifierFreeGuidance(sd.ScoreModel.from_score_fn(inner, sde), scale=4.0, null_label=3, interval=(0.3, 0.6))
    inside = (t >= 0.3) & (t <= 0.6)
    assert 0 < int(inside.sum()) < 64
    eps = windowed.eps(x, t, y=y)
    torch.testing.assert_close(eps[~inside], conditional.eps(x, t, y=y)[~inside], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eps[inside], full.eps(x, t, y=y)[inside], rtol=1e-12, atol=1e-12)
    # a batch wholly outside: the conditional model alone, on the plain batch
    inner.calls.clear()
    out = windowed.eps(x, 0.8, y=y)
    torch.testing.assert_close(out, conditional.eps(x, 0.8, y=y), rtol=1e-12, atol=1e-12)
    assert [c[0] for c in inner.calls] == [64]


# ----------------------------------------------------------------------------------------------------------
# classifier guidance
# ----------------------------------------------------------------------------------------------------------
def exact_classifier(gmm, sde):
    return lambda x, t: gmm.class_log_prob(x, t, sde)  # normalised log-probabilities are valid logits


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.0])
def test_classifier_guidance_is_bayes(gmm, sde, points, scale):
    x, t, y = points
    guided = ClassifierGuidance(gmm.score_model(sde), exact_classifier(gmm, sde), scale=scale)
    s_c, s_u = exact_conditional(gmm, x, t, y, sde), gmm.score(x, t, sde)
    with torch.no_grad():  # as inside a sampler: the wrapper takes its gradient anyway
        score = guided.score(x, t, y=y)
    # ∇ log p_t(y | x) = s_c − s_u (Bayes), so scale w gives s_u + w (s_c − s_u)
    torch.testing.assert_close(score, s_u + scale * (s_c - s_u), rtol=1e-6, atol=1e-9)
    sigma = sde.sigma(t)[:, None]
    torch.testing.assert_close(guided.eps(x, t, y=y), -sigma * score, rtol=1e-10, atol=1e-12)


def test_classifier_gradient_of_a_linear_classifier(gmm, sde):
    """Logits W x + b: ∇_x log softmax[y] = W_y − Σ_k p_k W_k (closed form); no graph or parameter grad is left."""
    torch.manual_seed(0)
    classifier = torch.nn.Linear(2, 3)
    guided = ClassifierGuidance(gmm.score_model(sde), lambda x, t: classifier(x), scale=0.7)
    x, y = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        score = guided.score(x, 0.5, y=y)
        probs = torch.softmax(classifier(x), 1)
        expected = gmm.score(x, 0.5, sde) + 0.7 * (classifier.weight[y] - probs @ classifier.weight)
    torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-6)
    assert not score.requires_grad and classifier.weight.grad is None


# ----------------------------------------------------------------------------------------------------------
# guided samples land on their class
# ----------------------------------------------------------------------------------------------------------
N = 1000
BANDWIDTHS = (0.15, 0.3, 0.6)
FLOOR_FACTOR = 2.5
NULL_REPS = 8


@pytest.fixture(scope="module")
def class_floor(gmm):
    """2.5 × the largest MMD between independent draws of N points from the class mixture."""
    sub = gmm.conditional(CLASS)
    null = [mmd(sub.sample(N, generator=torch.Generator().manual_seed(100 + 2 * r)),
                sub.sample(N, generator=torch.Generator().manual_seed(101 + 2 * r)), bandwidths=BANDWIDTHS)
            for r in range(NULL_REPS)]
    return FLOOR_FACTOR * max(null)


def guided_models(gmm, sde):
    return {
        "cfg": ClassifierFreeGuidance(gmm.conditional_score_model(sde), scale=1.0, null_label=gmm.null_label),
        "classifier": ClassifierGuidance(gmm.score_model(sde), exact_classifier(gmm, sde), scale=1.0),
    }


@pytest.mark.parametrize("wrapper, sampler", [
    ("cfg", S.DPMSolver(steps=20)),
    ("cfg", S.EulerMaruyama(steps=200)),
    ("classifier", S.DPMSolver(steps=20)),
], ids=["cfg-dpm_solver", "cfg-euler_maruyama", "classifier-dpm_solver"])
def test_guided_samples_are_the_class_mixture(gmm, sde, class_floor, wrapper, sampler):
    """Scale 1 samples class 2's two-component mixture. Measured over seeds 7, 17, 27 (floor 7.4e-3 =
    2.5 × max of 8 null MMDs): −0.22…0.21 × floor for every case; the other class ≈ 145 ×, the unconditional
    mixture 30–35 ×."""
    guided = guided_models(gmm, sde)[wrapper]
    out = sampler.sample(guided, shape=(N, 2), generator=torch.Generator().manual_seed(7),
                         model_kwargs={"y": torch.full((N,), CLASS)})
    target = gmm.conditional(CLASS).sample(N, generator=torch.Generator().manual_seed(8))
    other = gmm.conditional(1).sample(N, generator=torch.Generator().manual_seed(9))
    assert mmd(out.x, target, bandwidths=BANDWIDTHS) < class_floor
    # negative controls: another class, and the unconditional mixture (which holds class 2 at 40 %)
    assert mmd(out.x, other, bandwidths=BANDWIDTHS) > 10 * class_floor
    assert mmd(out.x, gmm.sample(N, generator=torch.Generator().manual_seed(10)), bandwidths=BANDWIDTHS) > 5 * class_floor


# ----------------------------------------------------------------------------------------------------------
# scale > 1: the tilted density p(x | y)^w p(x)^{1−w}
# ----------------------------------------------------------------------------------------------------------
def tilted_moments(gmm, sde, w, t):
    """Mean, variance and mass below 0 of p_t(x | 0)^w p_t(x)^{1−w}, normalised on a fine 1-D grid."""
    grid = torch.linspace(-6.0, 6.0, 24001, dtype=F64)[:, None]
    log_tilted = w * gmm.conditional(0).marginal_log_prob(grid, t, sde) + (1 - w) * gmm.marginal_log_prob(grid, t, sde)
    p = (log_tilted - log_tilted.max()).exp()
    p, xs = p / p.sum(), grid[:, 0]
    mean = (p * xs).sum()
    return float(mean), float((p * (xs - mean) ** 2).sum()), float(p[xs < 0].sum())


def test_large_scales_follow_the_tilted_density(sde):
    """Two overlapping 1-D classes N(∓0.5, 0.5²): at w = 2 the tilted density at t = eps has mean −0.645,
    variance 0.186 and class-0 mass (x < 0) 0.940, against −0.5, 0.25, 0.841 unguided.

    Predictor–corrector (200 levels, 3 Langevin corrector steps each) samples it; n = 4000 (standard errors:
    mean 0.007, variance 2.2 %, mass 0.004). Its residual bias (incomplete equilibration) measured over 5 seeds:
    mean −0.009…−0.031, variance −3…+6 %, mass +0.001…+0.011; tolerances |Δmean| ≤ 0.04, variance within
    10 %, |Δmass| ≤ 0.02. Doubling the guidance term (w = 3) gives Δmean −0.09…−0.11 and Δmass +0.035…+0.042
    over the same seeds, so it fails. DPM-Solver's probability flow, with no correction, concentrates more
    than the tilted density (measured mean −0.81, mass 0.989 at w = 2), and more as w grows (mass 0.838,
    0.989, 1.000 at w = 1, 2, 4; w = 1 matches the exact class mass 0.841).
    """
    gmm = GaussianMixture([[-0.5], [0.5]], [0.25, 0.25], labels=[0, 1])
    model, n = gmm.conditional_score_model(sde), 4000
    y = {"y": torch.zeros(n, dtype=torch.int64)}
    mean, var, mass = tilted_moments(gmm, sde, 2.0, sde.eps)
    guided = ClassifierFreeGuidance(model, scale=2.0, null_label=2)
    x = S.PredictorCorrector(steps=200, corrector_steps=3).sample(
        guided, shape=(n, 1), generator=torch.Generator().manual_seed(3), model_kwargs=y).x[:, 0]
    assert abs(float(x.mean()) - mean) <= 0.04
    assert abs(float(x.var()) / var - 1) <= 0.10
    assert abs(float((x < 0).double().mean()) - mass) <= 0.02
    # the probability-flow ODE over-concentrates, monotonically in w
    masses = []
    for w in (1.0, 2.0, 4.0):
        ode = S.DPMSolver(steps=20).sample(ClassifierFreeGuidance(model, scale=w, null_label=2), shape=(n, 1),
                                           generator=torch.Generator().manual_seed(4), model_kwargs=y).x[:, 0]
        masses.append(float((ode < 0).double().mean()))
        if w == 2.0:
            assert float(ode.mean()) < mean - 0.05 and float(ode.var()) < var
    assert masses[0] < mass < masses[1] < masses[2]
    assert abs(masses[0] - tilted_moments(gmm, sde, 1.0, sde.eps)[2]) <= 0.015


# ----------------------------------------------------------------------------------------------------------
# every sampler, with thresholding
# ----------------------------------------------------------------------------------------------------------
CONFIGS = {
    "ddim": dict(steps=6), "ddpm": dict(steps=6), "dpm_solver": dict(steps=6), "unipc": dict(steps=6),
    "heun": dict(steps=4), "dpm_solver_adaptive": dict(rtol=0.05), "unipc_adaptive": dict(rtol=0.05),
    "adaptive_sde": dict(rtol=0.1, atol=0.05), "euler_maruyama": dict(steps=8), "reverse_diffusion": dict(steps=8),
    "predictor_corrector": dict(steps=6), "probability_flow": dict(rtol=1e-3, atol=1e-3), "torchsde": dict(steps=6),
}


def test_every_sampler_is_configured_here():
    assert set(CONFIGS) == set(S.available())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_sampler_takes_both_wrappers_with_thresholding(gmm, sde, name):
    for wrapper, guided in guided_models(gmm, sde).items():
        for threshold in (StaticThreshold(1.5), DynamicThreshold(0.9, 1.5)):
            out = S.get(name, **CONFIGS[name], thresholding=threshold).sample(
                guided, shape=(16, 2), generator=torch.Generator().manual_seed(5),
                model_kwargs={"y": torch.arange(16) % 3})
            assert torch.isfinite(out.x).all(), (wrapper, threshold)
            assert float(out.x.abs().max()) <= 1.5 + 1e-5, (wrapper, threshold)  # the last x̂_0 is clipped too


# ----------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------
def test_bad_inputs_are_rejected(gmm, sde):
    model = gmm.conditional_score_model(sde)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        ClassifierFreeGuidance(model, scale=math.nan, null_label=3)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        ClassifierGuidance(gmm.score_model(sde), exact_classifier(gmm, sde), scale=math.inf)
    with pytest.raises(TypeError, match="model must be a sde_diffusion.ScoreModel"):
        ClassifierFreeGuidance(lambda x, t: x, scale=1.0, null_label=3)
    with pytest.raises(ValueError, match="null_label"):
        ClassifierFreeGuidance(model, scale=1.0, null_label=-1)
    with pytest.raises(ValueError, match="interval"):
        ClassifierFreeGuidance(model, scale=1.0, null_label=3, interval=(0.6, 0.3))
    with pytest.raises(TypeError, match="classifier must be callable"):
        ClassifierGuidance(model, classifier=None, scale=1.0)
    guided = ClassifierFreeGuidance(model, scale=2.0, null_label=3)
    with pytest.raises(ValueError, match=r'model_kwargs\["y"\]'):
        guided.eps(x, 0.5)
    with pytest.raises(ValueError, match=r'model_kwargs\["y"\] must have shape'):
        guided.eps(x, 0.5, y=torch.tensor([0]))
    with pytest.raises(TypeError, match=r'model_kwargs\["y"\] must be an integer tensor'):
        guided.eps(x, 0.5, y=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r'model_kwargs\["y"\]'):
        S.DPMSolver(steps=3).sample(guided, shape=(2, 2))
    classifier_guided = ClassifierGuidance(gmm.score_model(sde), exact_classifier(gmm, sde), scale=1.0)
    with pytest.raises(ValueError, match="classifier gives 3 classes"):
        classifier_guided.score(x, 0.5, y=torch.tensor([0, 3]))
    bad_shape = ClassifierGuidance(gmm.score_model(sde), lambda x, t: x.sum(1), scale=1.0)
    with pytest.raises(ValueError, match="logits of shape"):
        bad_shape.score(x, 0.5, y=torch.tensor([0, 1]))


def test_wrappers_keep_the_model_contract(sde):
    """ScoreModel subclasses: the inner model's SDE and parameters; with_net swaps the inner network."""
    torch.manual_seed(0)
    net = sd.nets.MLP(dim=2, hidden=16, depth=1, num_classes=3)
    trained = sd.ScoreModel(net, sde, prediction="eps")
    guided = ClassifierFreeGuidance(trained, scale=2.0, null_label=3, interval=(0.1, 0.9))
    assert isinstance(guided, sd.ScoreModel) and guided.sde is sde and guided.prediction == "eps"
    assert "scale=2" in repr(guided)
    assert {id(p) for p in guided.parameters()} == {id(p) for p in net.parameters()}
    other = sd.nets.MLP(dim=2, hidden=16, depth=1, num_classes=3)
    swapped = guided.with_net(other)
    assert swapped.net is other and (swapped.scale, swapped.null_label, swapped.interval) == (2.0, 3, (0.1, 0.9))
    # a real network: the guided ε is the closed form of its own two evaluations
    x, t, y = torch.randn(4, 2), torch.full((4,), 0.5), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        e_c, e_u = trained.eps(x, t, y=y), trained.eps(x, t, y=torch.full_like(y, 3))
        torch.testing.assert_close(guided.eps(x, t, y=y), e_u + 2.0 * (e_c - e_u), rtol=1e-5, atol=1e-6)
