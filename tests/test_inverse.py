"""Inpainting / imputation / linear inverse problems against exact posteriors of Gaussian mixtures.

For a GMM the posterior of the missing coordinates given the observed ones is again a GMM in closed form
(``GaussianMixture.condition``); it is checked here against independent formulas (the precision-matrix form
of the Gaussian conditional, numerical integration of the joint density). Every method then samples the
missing coordinate of a 2-D mixture given the first, and its samples are compared with exact posterior
samples by MMD against a measured data-vs-data noise floor and against unconditional samples (negative
control). Measured (n = 1000, 100 steps, exact score, VP SDE; floor ≈ 1.4e-3, unconditional ≈ 0.27):
replacement is biased (≈ 0.04, Song et al. 2021 App. I.2 only approximately conditions), its
predictor–corrector variant less so (≈ 0.015), RePaint resampling removes the bias (≈ 1e-4 at r = 4),
DPS is close at a tuned ζ (norm form ≈ 1e-3 at ζ = 1; Gaussian form σ_y = 0.2 ≈ 0.05), and biased but
far better than the control for a general linear operator (y = x1 + x2 + noise).
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
from sde_diffusion.inverse import AveragePool, DiffusionPosteriorSampling, GaussianBlur, Inpaint, MaskOperator
from sde_diffusion.metrics import mmd

F64 = torch.float64
N = 1000
STEPS = 100
Y1 = 1.2  # the observed first coordinate: the posterior of x2 is bimodal there (two components explain it)
MASK = torch.tensor([True, False])
OBSERVED = torch.tensor([Y1, 0.0])


def mixture() -> GaussianMixture:
    means = [[-1.5, -1.0], [1.0, 1.5], [1.5, -1.5]]
    covs = [[[0.3, 0.2], [0.2, 0.3]], [[0.25, -0.1], [-0.1, 0.2]], [[0.2, 0.0], [0.0, 0.15]]]
    return GaussianMixture(means, covs, [0.4, 0.35, 0.25])




def random_spd(d: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=g, dtype=F64)
    return a @ a.T + 0.5 * torch.eye(d, dtype=F64)


# ----- the exact posterior -----
@pytest.mark.parametrize("noise_var", [0.0, 0.3])
def test_condition_single_gaussian_matches_precision_form(noise_var):
    """Schur complement vs the precision form Λ of the joint of (x_m, y = x_o + n):
    cov = (Λ_mm)⁻¹, mean = μ_m − Λ_mm⁻¹ Λ_my (y − μ_o)."""
    g = torch.Generator().manual_seed(3)
    d, obs = 4, [2, 0]
    mu, cov = torch.randn(d, generator=g, dtype=F64), random_spd(d, g)
    y = torch.randn(2, generator=g, dtype=F64)
    post = GaussianMixture(mu[None], cov[None]).condition(obs, y, noise_var=noise_var)
    # the joint of (x_m, y), y = x_o + n (x_o marginalised out); condition on y through its precision matrix
    miss = [1, 3]
    joint = torch.cat([torch.cat([cov[miss][:, miss], cov[miss][:, obs]], 1),
                       torch.cat([cov[obs][:, miss], cov[obs][:, obs] + noise_var * torch.eye(2, dtype=F64)], 1)])
    precision = torch.linalg.inv(joint)
    cond_cov = torch.linalg.inv(precision[:2, :2])
    cond_mean = mu[miss] - cond_cov @ precision[:2, 2:] @ (y - mu[obs])
    torch.testing.assert_close(post.covs[0], cond_cov, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(post.means[0], cond_mean, rtol=1e-10, atol=1e-10)
    assert post.weights.item() == pytest.approx(1.0)


def test_condition_mixture_is_bayes_by_numeric_integration():
    """p(x2 | x1 = y) and the posterior weights ∫ w_k N_k(y, x2) dx2 / p(y), by the trapezoid rule on a grid."""
    gmm = mixture()
    post = gmm.condition([0], [Y1])
    grid = torch.linspace(-8, 8, 16001, dtype=F64)
    pts = torch.stack([torch.full_like(grid, Y1), grid], 1)
    comps = torch.stack([torch.distributions.MultivariateNormal(m, c).log_prob(pts).exp()
                         for m, c in zip(gmm.means, gmm.covs)], 1) * gmm.weights  # w_k N_k(y, x2), (G, K)
    per_comp = torch.trapezoid(comps, grid, dim=0)
    torch.testing.assert_close(post.weights, per_comp / per_comp.sum(), rtol=1e-8, atol=1e-12)
    joint = gmm.log_prob(pts).exp()
    conditional = joint / torch.trapezoid(joint, grid)
    torch.testing.assert_close(post.log_prob(grid[::400, None]).exp(), conditional[::400], rtol=1e-7, atol=1e-12)


def test_condition_rejects_bad_inputs():
    gmm = mixture()
    with pytest.raises(ValueError, match="observed_idx"):
        gmm.condition([2], [1.0])
    with pytest.raises(ValueError, match="observed_idx"):
        gmm.condition([0.5], [1.0])
    with pytest.raises(ValueError, match="every coordinate"):
        gmm.condition([0, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="values"):
        gmm.condition([0], [1.0, 2.0])
    with pytest.raises(ValueError, match="values"):
        gmm.condition([0], [math.nan])
    with pytest.raises(ValueError, match="noise_var"):
        gmm.condition([0], [1.0], noise_var=-1.0)


# ----- methods vs the exact posterior -----
def _methods(sde):
    gmm = mixture()
    model, dmodel = gmm.score_model(sde), gmm.score_model(sde)
    em = S.EulerMaruyama(steps=STEPS)
    return {
        "replacement (Euler-Maruyama)": (Inpaint(em, MASK, OBSERVED), model, 0.0),
        "replacement (reverse diffusion)": (Inpaint(S.ReverseDiffusion(steps=STEPS), MASK, OBSERVED), model, 0.0),
        "replacement (PC, Langevin)": (Inpaint(S.PredictorCorrector(steps=STEPS), MASK, OBSERVED), model, 0.0),
        "RePaint r=4 (reverse diffusion)":
            (Inpaint(S.ReverseDiffusion(steps=STEPS), MASK, OBSERVED, resample=4), model, 0.0),
        "RePaint r=4, jump 5 (reverse diffusion)":
            (Inpaint(S.ReverseDiffusion(steps=STEPS), MASK, OBSERVED, resample=4, jump_length=5), model, 0.0),
        "DPS norm, zeta=1 (Euler-Maruyama)":
            (em, DiffusionPosteriorSampling(dmodel, MaskOperator(MASK), OBSERVED, 1.0), 0.0),
        "DPS Gaussian, sigma_y=0.2 (Euler-Maruyama)":
            (em, DiffusionPosteriorSampling(dmodel, MaskOperator(MASK), OBSERVED, 1.0, noise_std=0.2), 0.2**2),
    }


@pytest.fixture(scope="module")
def results():
    sde, gmm = sd.VPSDE(), mixture()
    g = torch.Generator().manual_seed(1)
    exact = {0.0: gmm.condition([0], [Y1]), 0.2**2: gmm.condition([0], [Y1], noise_var=0.2**2)}
    reference = {v: post.sample(N, g) for v, post in exact.items()}
    floor = max(abs(mmd(exact[0.0].sample(N, g), exact[0.0].sample(N, g))) for _ in range(4))
    table = {"data vs data (floor)": floor, "unconditional (negative control)": mmd(reference[0.0], gmm.sample(N, g)[:, 1:])}
    outputs = {}
    for name, (sampler, model, noise_var) in _methods(sde).items():
        out = sampler.sample(model, shape=(N, 2), generator=torch.Generator().manual_seed(2))
        outputs[name] = out
        table[name] = mmd(reference[noise_var], out.x[:, 1:])
    print("\nMMD² of x2 | x1 = 1.2 against exact posterior samples (n=1000, 100 steps):")
    for name, value in table.items():
        print(f"  {name:45s} {value:.2e}")
    return table, outputs


def test_methods_against_exact_posterior(results, record_property):
    table, _ = results
    for name, value in table.items():
        record_property(name, value)
    floor, control = table["data vs data (floor)"], table["unconditional (negative control)"]
    methods = {k: v for k, v in table.items() if k not in ("data vs data (floor)", "unconditional (negative control)")}
    assert control > 50 * floor  # the control is far from the posterior, so the comparison can tell
    assert min(methods.values()) < 3 * floor
    for name, value in methods.items():
        assert value < control / 3, name
    # replacement conditions only approximately; RePaint's resampling removes most of that bias
    replacement = table["replacement (reverse diffusion)"]
    assert replacement > 5 * floor
    assert table["RePaint r=4 (reverse diffusion)"] < replacement / 10
    # jumps of 5 steps re-noise less often per noise level at equal NFE: still less biased than replacement
    # (measured 1.5e-2 against 4.2e-2; j = 1: 1.5e-4), as one block over the whole grid would be no better
    assert table["RePaint r=4, jump 5 (reverse diffusion)"] < replacement / 2
    assert table["DPS norm, zeta=1 (Euler-Maruyama)"] < 3 * floor


def test_dps_with_a_general_linear_operator(record_property):
    """y = x1 + x2 + N(0, 0.3²): in u = T x (T = [[1, 1], [1, −1]]) the data is again a GMM and y observes u1, so
    the exact posterior of u2 = x1 − x2 is ``condition`` of the rotated mixture. DPS (Gaussian form, ζ = 1) is
    close (measured 2.0e-2; data-vs-data floor, max of 3 pairs, 1.2e-2) and far from unconditional samples (2.5)."""
    gmm, sde, y, noise_std = mixture(), sd.VPSDE(), 0.5, 0.3
    rot = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=F64)
    exact = GaussianMixture(gmm.means @ rot.T, rot @ gmm.covs @ rot.T, gmm.weights).condition([0], [y], noise_std**2)
    g = torch.Generator().manual_seed(1)
    reference = exact.sample(N, g)
    floor = max(abs(mmd(exact.sample(N, g), exact.sample(N, g))) for _ in range(3))
    control = mmd(reference, (gmm.sample(N, g).double() @ rot.T)[:, 1:])
    dps = DiffusionPosteriorSampling(gmm.score_model(sde), lambda x: x.sum(1, keepdim=True),
                                     torch.tensor([[y]]), 1.0, noise_std=noise_std)
    out = S.EulerMaruyama(steps=STEPS).sample(dps, shape=(N, 2), generator=torch.Generator().manual_seed(2))
    u = out.x.double() @ rot.T
    value = mmd(reference, u[:, 1:])
    record_property("DPS sum operator", value)
    print(f"\nDPS, y = x1 + x2 + noise: MMD² {value:.2e} (floor {floor:.2e}, unconditional {control:.2e})")
    assert value < control / 30
    assert abs(float(u[:, 0].mean()) - y) < 0.1  # the measured combination is pulled to the measurement


def test_known_coordinates_are_the_observation_and_nfe(results):
    _, outputs = results
    for name in ("replacement (Euler-Maruyama)", "replacement (PC, Langevin)", "RePaint r=4 (reverse diffusion)"):
        assert (outputs[name].x[:, 0] == Y1).all(), name
    assert outputs["replacement (Euler-Maruyama)"].nfe == STEPS + 1
    assert outputs["replacement (PC, Langevin)"].nfe == 2 * STEPS + 1
    assert outputs["RePaint r=4 (reverse diffusion)"].nfe == 5 * STEPS + 1


def test_replacement_noises_the_observation_to_the_marginal_at_each_step():
    """After each step to s the known coordinate is α(s) y0 + σ(s) z: its batch mean and std, 5-sigma tolerances."""
    sde, n = sd.VPSDE(), 4000
    seen = {}
    Inpaint(S.EulerMaruyama(steps=8), MASK, OBSERVED).sample(
        mixture().score_model(sde), shape=(n, 2), generator=torch.Generator().manual_seed(5),
        callback=lambda info: seen.__setitem__(info["t"], info["x"][:, 0].double()))
    for s, known in seen.items():
        if s == 0.0:
            continue
        alpha, sigma = float(sde.alpha(s)), float(sde.sigma(s))
        assert abs(known.mean() - alpha * Y1) < 5 * sigma / math.sqrt(n), s
        assert abs(known.std() / sigma - 1) < 5 / math.sqrt(2 * n), s


def test_image_shaped_inpainting_keeps_pixels_and_is_reproducible():
    """(B, C, H, W) state, a per-pixel mask broadcast over the batch, a 16-D mixture as the exact score."""
    g = torch.Generator().manual_seed(0)
    gmm = GaussianMixture(torch.randn(3, 16, generator=g, dtype=F64), torch.full((3,), 0.2, dtype=F64))
    mask = torch.rand(1, 1, 4, 4, generator=g) < 0.5
    observed = torch.randn(1, 1, 4, 4, generator=g)
    sampler = Inpaint(S.DDIM(steps=10, eta=1.0), mask, observed, resample=1)
    model = gmm.score_model(sd.VPSDE())
    a = sampler.sample(model, shape=(8, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    b = sampler.sample(model, shape=(8, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.x, b.x)
    assert torch.equal(a.x[mask.expand(8, 1, 4, 4)], observed.expand(8, 1, 4, 4)[mask.expand(8, 1, 4, 4)])
    assert a.x[~mask.expand(8, 1, 4, 4)].std() > 0.1  # the unknown pixels are sampled, not copied


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpm_solver", "euler_maruyama", "heun", "predictor_corrector",
                                  "reverse_diffusion", "unipc"])
@pytest.mark.parametrize("resample", [0, 2])
def test_every_fixed_step_sampler_inpaints(name, resample):
    """Any step rule runs under replacement and RePaint (multistep histories restored on each redo)."""
    sde = sd.DiscreteVPSDE.linear(n=50) if name == "ddpm" else sd.VPSDE()
    inner = S.get(name) if name == "ddpm" else S.get(name, steps=6)
    out = Inpaint(inner, MASK, OBSERVED, resample=resample).sample(
        mixture().score_model(sde), shape=(64, 2), generator=torch.Generator().manual_seed(0))
    assert (out.x[:, 0] == Y1).all()
    assert torch.isfinite(out.x).all() and out.x[:, 1].std() > 0.1
    plain = inner.sample(mixture().score_model(sde), shape=(64, 2), generator=torch.Generator().manual_seed(0))
    assert out.nfe == (plain.nfe - inner.denoise) * (1 + resample) + inner.denoise


@pytest.mark.parametrize("jump, resample", [(1, 1), (3, 1), (4, 2)])
def test_repaint_jumps_redo_blocks_of_steps(jump, resample):
    """RePaint's schedule: each block of ``jump_length`` steps runs 1 + r times, re-noised from its last time
    back to its first by the forward kernel in between (DDIM evaluates at each step's start, so the times the
    model sees spell out the schedule)."""
    sde, seen = sd.VPSDE(), []
    exact = mixture().score_model(sde)

    def score(x, t):
        seen.append(round(float(t.reshape(-1)[0]), 5))
        return exact.score(x, t)

    inner = S.DDIM(steps=6, denoise=False)
    ts = [round(float(v), 5) for v in inner.times(sde)[:-1]]
    Inpaint(inner, MASK, OBSERVED, resample=resample, jump_length=jump).sample(
        sd.ScoreModel.from_score_fn(score, sde), shape=(8, 2), generator=torch.Generator().manual_seed(0))
    expected = []
    for first in range(0, 6, jump):
        expected += ts[first:first + jump] * (1 + resample)
    assert seen == expected


def test_repaint_jump_renoises_with_the_multi_step_forward_kernel():
    """One jump of j steps re-noises x_s → x_t with α_{t|s} = α_t/α_s and σ²_{t|s} = σ_t² − α_{t|s}² σ_s²: with the
    exact score of one Gaussian, the unknown coordinate's spread after the re-noising matches the kernel's."""
    sde = sd.VPSDE()
    gauss = GaussianMixture([[0.0, 0.0]], [[[1.0, 0.0], [0.0, 0.01]]])
    inner = S.DDIM(steps=4, denoise=False)
    grabbed = []
    ts = inner.times(sde)

    def score(x, t):
        if abs(float(t.reshape(-1)[0]) - float(ts[0])) < 1e-12:
            grabbed.append(x[:, 1].clone())
        return gauss.score(x, t, sde)

    Inpaint(inner, MASK, torch.tensor([0.0, 0.0]), resample=1, jump_length=4).sample(
        sd.ScoreModel.from_score_fn(score, sde), shape=(20000, 2), generator=torch.Generator().manual_seed(3))
    first, redo = grabbed  # x_T as drawn, then x_T re-noised from the block's end s = ts[-1]
    a, std = (float(v) for v in sde.transition(float(ts[-1]), float(ts[0])))
    # DDIM (η = 0) with the exact score carries N(0, σ²(T) + α²(T)·0.01) to ≈ N(0, σ_s² + α_s²·0.01) at s
    var_s = float(sde.sigma(float(ts[-1]))) ** 2 + float(sde.alpha(float(ts[-1]))) ** 2 * 0.01
    expected = a**2 * var_s + std**2
    assert abs(float(redo.var()) / expected - 1) < 0.05
    assert abs(float(first.var()) / float(sde.prior_std) ** 2 - 1) < 0.05


def test_repaint_jump_length_is_validated():
    with pytest.raises(ValueError, match="jump_length"):
        Inpaint(S.DDIM(steps=4), MASK, OBSERVED, resample=1, jump_length=0)


def test_dps_score_matches_closed_form_for_one_gaussian():
    """Data N(μ, Σ): x̂_0 is linear, J = ∂x̂_0/∂x = (I − σ² C⁻¹)/α with C = α²Σ + σ²I, so both DPS forms are explicit."""
    g = torch.Generator().manual_seed(7)
    d = 3
    mu, cov = torch.randn(d, generator=g, dtype=F64), random_spd(d, g)
    sde = sd.VPSDE()
    gmm = GaussianMixture(mu[None], cov[None])
    model = gmm.score_model(sde)
    a_mat = torch.randn(2, d, generator=g, dtype=F64)
    y = torch.randn(2, generator=g, dtype=F64)
    x, t = torch.randn(5, d, generator=g, dtype=F64), 0.4
    alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
    c_inv = torch.linalg.inv(alpha**2 * cov + sigma**2 * torch.eye(d, dtype=F64))
    score = -(x - alpha * mu) @ c_inv
    x0 = (x + sigma**2 * score) / alpha
    jac = (torch.eye(d, dtype=F64) - sigma**2 * c_inv) / alpha
    resid = x0 @ a_mat.T - y  # A x̂_0 − y
    grad_sq = resid @ a_mat @ jac  # ∇ ½‖y − A x̂_0‖² (J symmetric)
    operator = lambda v: v @ a_mat.T  # noqa: E731
    for zeta, noise_std, expected in [(1.0, 0.5, score - grad_sq / 0.25),
                                      (0.7, None, score - 0.7 * grad_sq / resid.norm(dim=1, keepdim=True))]:
        dps = DiffusionPosteriorSampling(model, operator, y, zeta, noise_std=noise_std)
        torch.testing.assert_close(dps.score(x, t), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(DiffusionPosteriorSampling(model, operator, y, 0.0).score(x, t), score, rtol=1e-12, atol=1e-12)


def test_bad_inputs_raise_clear_errors():
    sde = sd.VPSDE()
    model = mixture().score_model(sde)
    with pytest.raises(TypeError, match="FixedStepSampler"):
        Inpaint(S.ProbabilityFlowODE(), MASK, OBSERVED)
    with pytest.raises(ValueError, match="mask"):
        Inpaint(S.EulerMaruyama(steps=4), torch.tensor([0.5, 1.0]), OBSERVED)
    with pytest.raises(TypeError, match="observed"):
        Inpaint(S.EulerMaruyama(steps=4), MASK, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="observed"):
        Inpaint(S.EulerMaruyama(steps=4), MASK, torch.tensor([math.inf, 0.0]))
    with pytest.raises(ValueError, match="resample"):
        Inpaint(S.EulerMaruyama(steps=4), MASK, OBSERVED, resample=-1)
    with pytest.raises(ValueError, match="sample shape"):
        Inpaint(S.EulerMaruyama(steps=4), torch.ones(3, dtype=torch.bool), torch.zeros(3)).sample(model, shape=(4, 2))
    with pytest.raises(ValueError, match="sample shape"):
        Inpaint(S.EulerMaruyama(steps=4), torch.ones(3, 4, 2, dtype=torch.bool), torch.zeros(2)).sample(model, shape=(4, 2))
    with pytest.raises(TypeError, match="operator"):
        DiffusionPosteriorSampling(model, "A", OBSERVED)
    with pytest.raises(ValueError, match="noise_std"):
        DiffusionPosteriorSampling(model, MaskOperator(MASK), OBSERVED, noise_std=0.0)
    with pytest.raises(ValueError, match="scale"):
        DiffusionPosteriorSampling(model, MaskOperator(MASK), OBSERVED, scale=-1.0)
    with pytest.raises(ValueError, match="measurement"):
        S.EulerMaruyama(steps=2).sample(DiffusionPosteriorSampling(model, MaskOperator(MASK), torch.zeros(3)), shape=(4, 2))
    with pytest.raises(ValueError, match="divisible"):
        AveragePool(2)(torch.zeros(1, 1, 3, 4))
    with pytest.raises(ValueError, match="odd"):
        GaussianBlur(kernel_size=4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        GaussianBlur()(torch.zeros(2, 8))


# ----- example operators -----
OPERATORS = {
    "mask": MaskOperator(torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.5),
    "avgpool2": AveragePool(2),
    "blur": GaussianBlur(kernel_size=5, std=1.2),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
@settings(max_examples=20, deadline=None)
@given(a=st.floats(-3, 3), b=st.floats(-3, 3), seed=st.integers(0, 2**16))
def test_operators_are_linear(name, a, b, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(3, 2, 8, 8, generator=g, dtype=F64), torch.randn(3, 2, 8, 8, generator=g, dtype=F64)
    op = OPERATORS[name]
    torch.testing.assert_close(op(a * x + b * y), a * op(x) + b * op(y), rtol=1e-10, atol=1e-10)


def test_operators_against_direct_formulas():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 8, 8, generator=g, dtype=F64)
    pooled = AveragePool(2)(x)
    assert pooled.shape == (3, 2, 4, 4)
    torch.testing.assert_close(pooled, x.reshape(3, 2, 4, 2, 4, 2).mean((3, 5)))
    blur = GaussianBlur(kernel_size=5, std=1.2)
    delta = torch.zeros(1, 2, 9, 9, dtype=F64)
    delta[:, :, 4, 4] = 1.0
    k = torch.tensor([math.exp(-i * i / (2 * 1.2**2)) for i in range(-2, 3)], dtype=F64)
    k = k / k.sum()
    blurred = blur(delta)
    assert blurred.shape == delta.shape
    torch.testing.assert_close(blurred[0, 1, 2:7, 2:7], torch.outer(k, k), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(blur(torch.full((1, 1, 8, 8), 2.5, dtype=F64)), torch.full((1, 1, 8, 8), 2.5, dtype=F64))
    mask = torch.tensor([True, False, True])
    torch.testing.assert_close(MaskOperator(mask)(torch.ones(2, 3)), torch.tensor([[1.0, 0.0, 1.0]] * 2))
