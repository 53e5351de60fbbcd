"""dsm_loss: DDPM's discrete loss equals diffusers'; the exact GMM score attains the minimum, with the analytic
excess for a perturbed score; every weighting is unbiased for its integral (scipy quadrature of a closed form);
stratified t lowers the variance; gradients, kwargs, explicit t/noise, seeds and errors."""
from __future__ import annotations

import math
import re

import pytest
import torch
from scipy import integrate, special

import sde_diffusion as sd
from sde_diffusion.losses import dsm_loss

F64 = torch.float64
VP = sd.VPSDE()  # β ∈ [0.1, 20], eps = 1e-3
VE = sd.VESDE(0.01, 10.0)


# ----- the schedules written independently (closed forms, numpy scalars) -----
def vp_schedule(t: float):
    """(α, σ, g²) of VPSDE(0.1, 20)."""
    alpha = math.exp(-0.25 * t**2 * 19.9 - 0.05 * t)
    return alpha, math.sqrt(1 - alpha**2), 0.1 + 19.9 * t


def ve_schedule(t: float):
    """(α, σ, g²) of VESDE(0.01, 10)."""
    sigma = 0.01 * 1000.0**t
    return 1.0, sigma, 2 * math.log(1000.0) * sigma**2


SCHEDULES = {"vp": (VP, vp_schedule), "ve": (VE, ve_schedule)}


def weight(weighting: str, t: float, schedule, sigma_data: float = 0.5) -> float:
    """w(t) of each weighting in J_w = 1/(T − eps) ∫ w E‖s_θ + ε/σ‖² dt (for "edm" the integrand over p_edm)."""
    a, s, g2 = schedule(t)
    return {"eps": s**2, "score": s**2, "likelihood": g2, "v": (a**2 + s**2) ** 2 * s**2 / a**2,
            "edm": ((s / a) ** 2 + sigma_data**2) * s**2 / sigma_data**2}[weighting]


def expectation_over_t(weighting: str, integrand, sde, schedule, p_mean=-1.2, p_std=1.2, sigma_data=0.5) -> float:
    """E_t[w(t) k(t)]: uniform t on [eps, T], or for "edm" the clamped log-normal density of σ̃ = σ/α."""
    def wk(t):
        return weight(weighting, t, schedule, sigma_data) * integrand(t)

    if weighting != "edm":
        return integrate.quad(wk, sde.eps, sde.T, limit=400, epsabs=0, epsrel=1e-10)[0] / (sde.T - sde.eps)

    def n_of(t):  # ln σ̃(t) = p_mean + p_std n
        a, s, _ = schedule(t)
        return (math.log(s / a) - p_mean) / p_std

    def density(t):  # φ(n(t)) dn/dt with d ln σ̃/dt = −dλ/dt = g²/(2σ²)
        _, s, g2 = schedule(t)
        return math.exp(-0.5 * n_of(t) ** 2) / math.sqrt(2 * math.pi) * g2 / (2 * s**2) / p_std

    inner = integrate.quad(lambda t: density(t) * wk(t), sde.eps, sde.T, limit=400, epsabs=0, epsrel=1e-10)[0]
    return inner + special.ndtr(n_of(sde.eps)) * wk(sde.eps) + special.ndtr(-n_of(sde.T)) * wk(sde.T)


def z_score(samples: torch.Tensor, expected: float):
    mean, se = float(samples.mean()), float(samples.std() / math.sqrt(samples.numel()))
    return (mean - expected) / se, se


# ----- DDPM's discrete loss against diffusers -----
class ToyIndexNet(torch.nn.Module):
    """ε-net of (x, integer step i): a small MLP with a sinusoidal step embedding."""

    def __init__(self, dim: int = 4):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(dim + 8, 32, generator=gen) / 3)
        self.w2 = torch.nn.Parameter(torch.randn(32, dim, generator=gen) / 6)
        self.freqs = torch.logspace(0, 3, 4) / 1000
        self.seen = {}

    def forward(self, x, i, **kwargs):
        self.seen.update(x=x, i=i, kwargs=kwargs)
        angle = i.float()[:, None] * self.freqs
        h = torch.cat([x, angle.sin(), angle.cos()], 1)
        return torch.tanh(h @ self.w1) @ self.w2


def test_discrete_loss_equals_diffusers():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000)
    net = ToyIndexNet()
    model = sd.ScoreModel(net, sd.DiscreteVPSDE.linear(), prediction="eps", time_input="index")
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(256, 4, generator=gen), torch.randn(256, 4, generator=gen)
    steps = torch.randint(0, 1000, (256,), generator=gen)
    steps[:2] = torch.tensor([0, 999])
    noisy = sched.add_noise(x0, noise, steps)
    with torch.no_grad():
        reference = ((net(noisy, steps) - noise) ** 2).mean(1)
        ours = dsm_loss(model, x0, "eps", t=(steps.double() + 1) / 1000, noise=noise, reduction="none")
    torch.testing.assert_close(net.seen["i"], steps, rtol=0, atol=0)
    torch.testing.assert_close(net.seen["x"], noisy, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    assert float(ours.mean()) > 0.1  # a non-trivial loss, so the match means something


def test_discrete_draw_is_uniform_over_steps():
    sde, seen = sd.DiscreteVPSDE.linear(), []
    model = sd.ScoreModel(lambda x, t: seen.append(t.clone()) or torch.zeros_like(x), sde)  # continuous: t itself
    gen = torch.Generator().manual_seed(2)
    x0 = torch.zeros(20_000, 1, dtype=F64)  # the net then sees t in float64
    for _ in range(10):
        dsm_loss(model, x0, "eps", generator=gen)
    t = torch.cat(seen)
    steps = t * 1000 - 1
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-9)  # t = (i + 1)/N exactly
    counts = torch.bincount(steps.round().long(), minlength=1000).double()
    assert counts.numel() == 1000 and counts.min() > 0
    expected = t.numel() / 1000
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert abs(chi2 - 999) < 5 * math.sqrt(2 * 999), chi2  # χ²(999): mean 999, sd 44.7
    seen.clear()
    dsm_loss(model, torch.zeros(1000, 1, dtype=F64), "eps", t_sampling="stratified", generator=gen)
    assert torch.equal(torch.sort((seen[0] * 1000 - 1).round().long()).values, torch.arange(1000))  # each step once


# ----- the exact score attains the minimum; a perturbed one pays E_t w E_x‖δ‖² -----
GMM = sd.data.GaussianMixture([[-1.0, 0.5], [1.5, 0.0], [0.0, -1.5]], [[0.1, 0.3], [0.2, 0.05], [0.15, 0.15]],
                              [0.5, 0.3, 0.2])
OFFSET, SLOPE = torch.tensor([0.3, -0.2], dtype=F64), 0.25


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("weighting,importance", [("eps", True), ("likelihood", True), ("likelihood", False)])
def test_exact_gmm_score_attains_the_minimum(sde_name, weighting, importance):
    sde, schedule = SCHEDULES[sde_name]
    exact = GMM.score_model(sde)
    perturbed = sd.ScoreModel.from_score_fn(lambda x, t: GMM._score(x, t.double(), sde) + OFFSET + SLOPE * x, sde)
    x0 = GMM.sample(40_000, torch.Generator().manual_seed(3), dtype=F64)
    losses = [dsm_loss(m, x0, weighting, importance=importance, generator=torch.Generator().manual_seed(4),
                       reduction="none") for m in (exact, perturbed)]  # common random numbers: same t, same noise
    mean_x0 = (GMM.weights[:, None] * GMM.means).sum(0)
    second_x0 = (GMM.weights[:, None] * (GMM.means**2 + torch.diagonal(GMM.covs, dim1=1, dim2=2))).sum(0)

    def excess(t):  # E_x‖δ(x_t)‖², δ = a + c x, x_t = α x0 + σ ε, mean over the 2 dims
        a, s, _ = schedule(t)
        return float((OFFSET**2 + 2 * SLOPE * OFFSET * a * mean_x0 + SLOPE**2 * (a**2 * second_x0 + s**2)).mean())

    expected = expectation_over_t(weighting, excess, sde, schedule)
    z, se = z_score(losses[1] - losses[0], expected)
    assert abs(z) < 4, (z, expected, se)
    assert se < expected / 8  # a factor 2 in the weight would be caught


# ----- unbiasedness for J_w: a deliberately wrong linear score on Gaussian data -----
DATA_MEAN, DATA_STD = 0.5, 0.7


def wrong_linear_model(sde, sigma_data: float = 0.5):
    """s(x, t) = −(x − a(t))/b(t), a = 0.2 α, b = α² + σ² (the truth has mean 0.5 α and variance 0.49 α² + σ²)."""
    def score(x, t):
        a, s = sde.alpha(t.double()).to(x.dtype)[:, None], sde.sigma(t.double()).to(x.dtype)[:, None]
        return -(x - 0.2 * a) / (a**2 + s**2)

    return sd.ScoreModel(score, sde, prediction="score", sigma_data=sigma_data)


def wrong_model_error(t: float) -> float:
    """E‖s(x_t) + ε/σ‖² in closed form: x_t = α(μ + s z) + σ ε, so
    s(x_t) + ε/σ = −(αμ − a)/b − αs z/b + (1/σ − σ/b) ε with z, ε independent standard normals."""
    a, s, _ = vp_schedule(t)
    b = a**2 + s**2
    return ((a * DATA_MEAN - 0.2 * a) / b) ** 2 + (a * DATA_STD / b) ** 2 + (1 / s - s / b) ** 2


@pytest.mark.parametrize("t_sampling", ["uniform", "stratified"])
@pytest.mark.parametrize("weighting,options", [
    ("eps", {}), ("score", {}), ("likelihood", {"importance": True}), ("likelihood", {"importance": False}), ("v", {}),
    ("edm", {}), ("edm", {"p_mean": -0.4, "p_std": 1.5, "sigma_data": 0.8}),
], ids=["eps", "score", "likelihood-importance", "likelihood-uniform", "v", "edm", "edm-custom"])
def test_each_weighting_is_unbiased_for_its_integral(weighting, options, t_sampling):
    gen = torch.Generator().manual_seed(5)
    options = dict(options)
    model = wrong_linear_model(VP, options.pop("sigma_data", 0.5))
    x0 = DATA_MEAN + DATA_STD * torch.randn(200_000, 1, generator=gen, dtype=F64)
    losses = dsm_loss(model, x0, weighting, t_sampling=t_sampling, generator=gen, reduction="none", **options)
    lognormal = {k: v for k, v in options.items() if k in ("p_mean", "p_std")}
    expected = expectation_over_t(weighting, wrong_model_error, VP, vp_schedule, sigma_data=model.sigma_data,
                                  **lognormal)
    z, se = z_score(losses, expected)  # the i.i.d. standard error is conservative for stratified draws
    assert abs(z) < 4, (z, expected, se)
    assert se < expected / 8


def test_score_weighting_equals_eps_weighting():
    gen = torch.Generator().manual_seed(6)
    x0, noise = torch.randn(64, 3, generator=gen, dtype=F64), torch.randn(64, 3, generator=gen, dtype=F64)
    t = 0.01 + 0.99 * torch.rand(64, generator=gen, dtype=F64)
    model = wrong_linear_model(VP)
    losses = [dsm_loss(model, x0, w, t=t, noise=noise, reduction="none") for w in ("eps", "score")]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-12)


def test_stratified_time_draws_lower_the_variance():
    model, gen = wrong_linear_model(VP), torch.Generator().manual_seed(7)
    batch_means = {}
    for t_sampling in ("uniform", "stratified"):
        batch_means[t_sampling] = torch.stack([
            dsm_loss(model, DATA_MEAN + DATA_STD * torch.randn(64, 32, generator=gen, dtype=F64), "eps",
                     t_sampling=t_sampling, generator=gen) for _ in range(1500)])
    uniform, stratified = batch_means["uniform"], batch_means["stratified"]
    assert float(uniform.var() / stratified.var()) > 2.0, (float(uniform.var()), float(stratified.var()))
    diff_se = math.sqrt(float(uniform.var() + stratified.var()) / 1500)
    assert abs(float(uniform.mean() - stratified.mean())) < 4 * diff_se


def test_time_draws_come_first_then_the_noise():
    """The documented order: u = rand(B) (t = eps + (T − eps) u), then noise = randn(x0.shape)."""
    model, x0 = wrong_linear_model(VP), torch.randn(16, 3)
    gen = torch.Generator().manual_seed(8)
    u = torch.rand(16, generator=gen, dtype=F64)
    noise = torch.randn(16, 3, generator=gen)
    by_hand = dsm_loss(model, x0, "eps", t=VP.eps + (VP.T - VP.eps) * u, noise=noise, reduction="none")
    drawn = dsm_loss(model, x0, "eps", generator=torch.Generator().manual_seed(8), reduction="none")
    torch.testing.assert_close(drawn, by_hand, rtol=0, atol=0)
    again = dsm_loss(model, x0, "eps", generator=torch.Generator().manual_seed(8), reduction="none")
    other = dsm_loss(model, x0, "eps", generator=torch.Generator().manual_seed(9), reduction="none")
    assert torch.equal(drawn, again) and not torch.allclose(drawn, other)
    torch.testing.assert_close(drawn.mean(), dsm_loss(model, x0, "eps", generator=torch.Generator().manual_seed(8)))


# ----- plumbing -----
class TinyNet(torch.nn.Module):
    """Linear in (x, t, y): enough to carry gradients and record what it was called with."""

    def __init__(self, dim: int = 2):
        super().__init__()
        self.lin = torch.nn.Linear(dim + 2, dim)
        self.seen = {}

    def forward(self, x, t, y=None):
        self.seen.update(x=x, t=t, y=y)
        label = torch.zeros_like(t) if y is None else y.to(x.dtype)
        return self.lin(torch.cat([x, t[:, None], label[:, None]], 1))


@pytest.mark.parametrize("prediction", ["eps", "v", "edm"])
@pytest.mark.parametrize("weighting", ["eps", "score", "likelihood", "v", "edm"])
def test_gradients_reach_the_parameters(prediction, weighting):
    torch.manual_seed(0)
    model = sd.ScoreModel(TinyNet(), VP, prediction=prediction)
    loss = dsm_loss(model, torch.randn(32, 2), weighting, generator=torch.Generator().manual_seed(9))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_model_kwargs_and_explicit_t_and_noise_reach_the_net():
    net = TinyNet()
    model = sd.ScoreModel(net, VP)
    x0, noise = torch.randn(8, 2), torch.randn(8, 2)
    t, y = torch.linspace(0.1, 0.9, 8, dtype=F64), torch.arange(8)
    dsm_loss(model, x0, "eps", t=t, noise=noise, model_kwargs={"y": y})
    alpha, sigma = VP.alpha(t).float()[:, None], VP.sigma(t).float()[:, None]
    torch.testing.assert_close(net.seen["x"], alpha * x0 + sigma * noise)
    torch.testing.assert_close(net.seen["t"], t.float(), rtol=0, atol=0)
    assert net.seen["y"] is y
    dsm_loss(model, x0, "eps", t=0.25, noise=noise)  # a scalar t is one time for the whole batch
    torch.testing.assert_close(net.seen["t"], torch.full((8,), 0.25))


@pytest.mark.parametrize("kwargs,message", [
    ({"weighting": "l2"}, re.escape("weighting must be one of ('eps', 'score', 'likelihood', 'v', 'edm')")),
    ({"t_sampling": "sobol"}, re.escape("t_sampling must be one of ('uniform', 'stratified')")),
    ({"reduction": "sum"}, re.escape("reduction must be one of ('mean', 'none')")),
    ({"x0": torch.zeros(0, 2)}, "x0 must have a non-empty batch"),
    ({"x0": torch.tensor([[0.0, float("nan")]])}, "x0 contains NaN"),
    ({"t": torch.full((4,), 1.5)}, r"t must lie in \[0, T=1\]"),
    ({"t": torch.full((3,), 0.5)}, r"t has shape \(3,\) but x0 has shape \(4, 2\)"),
    ({"noise": torch.zeros(4, 3)}, r"noise must be a tensor of x0's shape \(4, 2\)"),
    ({"p_std": 0.0}, "p_std must be a positive"),
])
def test_bad_inputs_are_named(kwargs, message):
    args = {"x0": torch.zeros(4, 2), **kwargs}
    with pytest.raises(ValueError, match=message):
        dsm_loss(wrong_linear_model(VP), **args)


def test_bad_types_are_named():
    with pytest.raises(TypeError, match="model must be a sde_diffusion.ScoreModel"):
        dsm_loss(lambda x, t: x, torch.zeros(4, 2))
    with pytest.raises(TypeError, match="x0 must be a floating-point tensor"):
        dsm_loss(wrong_linear_model(VP), torch.zeros(4, 2, dtype=torch.long))
