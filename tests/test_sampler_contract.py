"""The sampler contract (DESIGN.md, "Conventions"), checked for every sampler in the registry.

* randomness only from ``generator``: same seed, same samples; x_T is drawn first as
  ``sde.prior_sample(shape, generator)``, so ``sample(x_T=prior_sample(shape, g), generator=g)``
  continues the same random stream as ``sample(shape=shape, generator=g')`` with g' seeded alike;
* ``nfe`` counts network evaluations (the final denoise included) and matches the documented counts;
* grids (names, explicit tensors, callables) are accepted and reported back in ``times``; bad explicit
  grids are rejected naming ``grid``;
* NaN/Inf stops sampling with ``NonFiniteError`` naming the step and t;
* callbacks see every step; images keep their shape; ``model_kwargs`` reach the network;
* no state is retained per step unless a trajectory is asked for;
* bad arguments raise errors that name the argument.

Samplers added to the registry later are picked up automatically (built with small ``steps``).
"""
from __future__ import annotations

import gc
import inspect
import re
import warnings

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion.data import GaussianMixture
from sde_diffusion.samplers.grids import GRIDS, make_grid

from _sampler_reference import reference_gmm

NAMES = S.available()
SHAPE = (16, 2)
STEPS = 6


def build(name: str, steps: int = STEPS, **kwargs) -> S.Sampler:
    """A registry sampler with few steps (where it takes ``steps``)."""
    if "steps" in inspect.signature(S.REGISTRY[name].__init__).parameters:
        kwargs.setdefault("steps", steps)
    return S.get(name, **kwargs)


def takes_steps(name: str) -> bool:
    return "steps" in inspect.signature(S.REGISTRY[name].__init__).parameters


@pytest.fixture(scope="module")
def sde():
    return sd.VPSDE()


@pytest.fixture(scope="module")
def model(sde):
    return reference_gmm().score_model(sde)


class CountingScore:
    """An exact GMM score that counts its calls and records the keyword arguments it receives."""

    def __init__(self, sde, gmm=None):
        self.gmm = gmm or reference_gmm()
        self.sde = sde
        self.calls = 0
        self.kwargs = []

    def __call__(self, x, t, **kwargs):
        self.calls += 1
        self.kwargs.append(kwargs)
        return self.gmm.score(x, t.double(), self.sde)

    def model(self):
        return sd.ScoreModel.from_score_fn(self, self.sde)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ============================================================================ randomness


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_samples(name, model):
    sampler = build(name)
    a = sampler.sample(model, shape=SHAPE, generator=_gen(3)).x
    b = sampler.sample(model, shape=SHAPE, generator=_gen(3)).x
    c = sampler.sample(model, shape=SHAPE, generator=_gen(4)).x
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_x_T_path_continues_the_same_random_stream(name, model, sde):
    """x_T is the generator's first draw; a sampler given x_T and the advanced generator reproduces
    the sampler given only the shape and a fresh generator with the same seed."""
    sampler = build(name)
    g = _gen(5)
    x_T = sde.prior_sample(SHAPE, g)
    kept = x_T.clone()
    from_x_T = sampler.sample(model, x_T=x_T, generator=g).x
    from_shape = sampler.sample(model, shape=SHAPE, generator=_gen(5)).x
    assert torch.equal(from_x_T, from_shape)
    assert torch.equal(x_T, kept), "the sampler modified x_T in place"


@pytest.mark.parametrize("name", NAMES)
def test_dtype_follows_x_T_and_dtype_argument(name, model, sde):
    sampler = build(name)
    x_T = sde.prior_sample(SHAPE, _gen(6), dtype=torch.float64)
    assert sampler.sample(model, x_T=x_T, generator=_gen(6)).x.dtype == torch.float64
    assert sampler.sample(model, shape=SHAPE, generator=_gen(6), dtype=torch.float64).x.dtype == torch.float64
    assert sampler.sample(model, shape=SHAPE, generator=_gen(6)).x.dtype == torch.float32


# ============================================================================ NFE


@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_nfe_counts_every_network_call(name, denoise, sde):
    if "denoise" not in inspect.signature(S.REGISTRY[name].__init__).parameters:
        pytest.skip(f"{name} has no denoise option")
    counter = CountingScore(sde)
    out = build(name, denoise=denoise).sample(counter.model(), shape=SHAPE, generator=_gen(7))
    assert out.nfe == counter.calls > 0


NFE_CASES = [
    # sampler, sde factory, documented NFE
    pytest.param(lambda: S.EulerMaruyama(steps=7), sd.VPSDE, 7 + 1, id="euler_maruyama"),
    pytest.param(lambda: S.EulerMaruyama(steps=7, denoise=False), sd.VPSDE, 7, id="euler_maruyama-no_denoise"),
    pytest.param(lambda: S.ReverseDiffusion(steps=7), sd.VPSDE, 7 + 1, id="reverse_diffusion"),
    pytest.param(lambda: S.PredictorCorrector(steps=7, corrector="none"), sd.VPSDE, 7 * 1 + 1, id="pc-none"),
    pytest.param(lambda: S.PredictorCorrector(steps=7, corrector_steps=1), sd.VPSDE, 7 * 2 + 1, id="pc-1"),
    pytest.param(lambda: S.PredictorCorrector(steps=7, corrector_steps=2), sd.VPSDE, 7 * 3 + 1, id="pc-2"),
    pytest.param(lambda: S.PredictorCorrector("ancestral", steps=7, corrector_steps=2), sd.VESDE, 7 * 3 + 1, id="pc-ancestral-2"),
    pytest.param(lambda: S.DDPM(), lambda: sd.DiscreteVPSDE.linear(n=1000), 1000, id="ddpm-native-1000"),
    pytest.param(lambda: S.DDPM(), lambda: sd.DiscreteVPSDE.linear(n=50, beta_start=1e-3, beta_end=0.2), 50, id="ddpm-native-50"),
    pytest.param(lambda: S.DDPM(steps=7), sd.VPSDE, 7 + 1, id="ddpm-7"),
    pytest.param(lambda: S.DDIM(steps=7), sd.VPSDE, 7 + 1, id="ddim"),
    pytest.param(lambda: S.DDIM(steps=7, eta=1.0), sd.VESDE, 7 + 1, id="ddim-eta1"),
    pytest.param(lambda: S.ProbabilityFlowODE(method="euler", steps=7), sd.VPSDE, 7 + 1, id="ode-euler"),
    pytest.param(lambda: S.ProbabilityFlowODE(method="midpoint", steps=7), sd.VPSDE, 2 * 7 + 1, id="ode-midpoint"),
    pytest.param(lambda: S.ProbabilityFlowODE(method="rk4", steps=7), sd.VPSDE, 4 * 7 + 1, id="ode-rk4"),
    pytest.param(lambda: S.ProbabilityFlowODE(method="rk4", steps=7, denoise=False), sd.VPSDE, 4 * 7, id="ode-rk4-no_denoise"),
]


@pytest.mark.parametrize("make,make_sde,expected", NFE_CASES)
def test_nfe_matches_documented_count(make, make_sde, expected):
    counter = CountingScore(make_sde())
    out = make().sample(counter.model(), shape=SHAPE, generator=_gen(8))
    assert out.nfe == counter.calls == expected


def test_nfe_of_adaptive_ode_is_the_number_of_calls(sde):
    counter = CountingScore(sde)
    out = S.ProbabilityFlowODE(method="dopri5", rtol=1e-4, atol=1e-4).sample(counter.model(), shape=SHAPE, generator=_gen(9))
    assert out.nfe == counter.calls > 6  # torchdiffeq's own evaluations (initial step choice, rejected steps) included


# ============================================================================ grids


def _fixed_grid_samplers():
    """Every sampler that walks a grid: FixedStepSampler subclasses in the registry, TorchSDE, fixed-grid ODEs."""
    makers = {}
    for name in NAMES:
        if issubclass(S.REGISTRY[name], S.FixedStepSampler):
            makers[name] = lambda grid, denoise=True, name=name: build(name, grid=grid, denoise=denoise)
    makers["torchsde_euler"] = lambda grid, denoise=True: S.TorchSDE("euler", steps=STEPS, grid=grid, denoise=denoise)
    makers["torchsde_heun"] = lambda grid, denoise=True: S.TorchSDE("heun", steps=STEPS, grid=grid, denoise=denoise)
    makers["ode_rk4"] = lambda grid, denoise=True: S.ProbabilityFlowODE(method="rk4", steps=STEPS, grid=grid, denoise=denoise)
    makers["ode_euler"] = lambda grid, denoise=True: S.ProbabilityFlowODE(method="euler", steps=STEPS, grid=grid, denoise=denoise)
    return makers


GRID_SAMPLERS = _fixed_grid_samplers()
EXPLICIT = torch.tensor([1.0, 0.7, 0.4, 0.2, 0.05, 1e-3], dtype=torch.float64)


def _power_grid(sde, steps):
    return sde.eps + (sde.T - sde.eps) * torch.linspace(1, 0, steps + 1, dtype=torch.float64) ** 3


GRID_KINDS = {**{name: name for name in sorted(set(GRIDS) | {"uniform", "quadratic", "log_snr"})},
              "tensor": EXPLICIT, "callable": _power_grid}


@pytest.mark.parametrize("grid_kind", sorted(GRID_KINDS))
@pytest.mark.parametrize("sampler_name", sorted(GRID_SAMPLERS))
def test_every_grid_accepted_and_reported(sampler_name, grid_kind, model, sde):
    grid = GRID_KINDS[grid_kind]
    expected = EXPLICIT if grid_kind == "tensor" else make_grid(grid, sde, STEPS)
    make = GRID_SAMPLERS[sampler_name]

    out = make(grid).sample(model, shape=SHAPE, generator=_gen(10), return_trajectory=True)
    assert out.times.dtype == torch.float64
    torch.testing.assert_close(out.times, torch.cat([expected, expected.new_zeros(1)]), rtol=0, atol=1e-12)
    assert torch.isfinite(out.x).all()
    if isinstance(make(grid), S.FixedStepSampler):
        assert len(out.trajectory) == len(out.times)  # one state per time visited

    out = make(grid, denoise=False).sample(model, shape=SHAPE, generator=_gen(10))
    torch.testing.assert_close(out.times, expected, rtol=0, atol=1e-12)


BAD_GRIDS = {
    "increasing": torch.tensor([1e-3, 0.5, 1.0], dtype=torch.float64),
    "repeated_time": torch.tensor([1.0, 0.5, 0.5, 1e-3], dtype=torch.float64),
    "ends_at_zero": torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64),
    "negative": torch.tensor([1.0, 0.5, -0.1], dtype=torch.float64),
    "starts_after_T": torch.tensor([1.5, 0.5, 1e-3], dtype=torch.float64),
    "single_time": torch.tensor([1.0], dtype=torch.float64),
    "nan": torch.tensor([1.0, float("nan"), 1e-3], dtype=torch.float64),
}


@pytest.mark.parametrize("bad", sorted(BAD_GRIDS))
@pytest.mark.parametrize("sampler_name", ["euler_maruyama", "ddim", "ddpm", "predictor_corrector", "torchsde_euler", "ode_rk4"])
def test_bad_explicit_grid_raises_naming_grid(sampler_name, bad, model):
    with pytest.raises(ValueError, match="grid"):
        GRID_SAMPLERS[sampler_name](BAD_GRIDS[bad]).sample(model, shape=SHAPE, generator=_gen(11))


@pytest.mark.parametrize("grid,error", [("no_such_grid", ValueError), (3.5, TypeError)])
def test_unknown_grid_raises_naming_grid(grid, error, model):
    with pytest.raises(error, match="grid"):
        S.EulerMaruyama(steps=STEPS, grid=grid).sample(model, shape=SHAPE, generator=_gen(12))


# ============================================================================ NaN / Inf


def _nan_below(sde, t_nan=0.5):
    gmm = reference_gmm()

    def score(x, t):
        s = gmm.score(x, t.double(), sde)
        return s if float(t.max()) >= t_nan else torch.full_like(s, float("nan"))

    return sd.ScoreModel.from_score_fn(score, sde)


@pytest.mark.parametrize("name", ["euler_maruyama", "reverse_diffusion", "predictor_corrector", "ddpm", "ddim"])
def test_nan_names_step_and_time(name, sde):
    # uniform grid, 10 steps: t_i = 1 − 0.0999 i; the first evaluation below 0.5 is at t_6 = 0.4006
    with pytest.raises(S.NonFiniteError) as info:
        build(name, steps=10).sample(_nan_below(sde), shape=SHAPE, generator=_gen(13))
    message = str(info.value)
    assert "step 6" in message and "t = 0.4006" in message, message


@pytest.mark.parametrize("name", NAMES)
def test_nan_raises_non_finite_error_for_every_sampler(name, sde):
    with pytest.raises(S.NonFiniteError) as info:
        build(name, steps=10).sample(_nan_below(sde), shape=SHAPE, generator=_gen(14))
    message = str(info.value)
    assert re.search(r"(step|evaluation) \d+", message) and "t = " in message, message


@pytest.mark.parametrize("name", ["ddim", "torchsde", "probability_flow"])
def test_nan_at_the_end_of_the_grid_is_caught(name, sde):
    """NaN only at t = eps: for DDIM and torchsde's Euler that is the final denoise alone, for rk4 its last stage."""
    gmm = reference_gmm()

    def score(x, t):  # finite everywhere except at the very end of the grid
        s = gmm.score(x, t.double(), sde)
        return s if float(t.max()) > 2 * sde.eps else torch.full_like(s, float("nan"))

    kwargs = {"method": "rk4"} if name == "probability_flow" else {}
    with pytest.raises(S.NonFiniteError, match="t = "):
        build(name, **kwargs).sample(sd.ScoreModel.from_score_fn(score, sde), shape=SHAPE, generator=_gen(15))


FIXED_STEP = [n for n in NAMES if isinstance(build(n), S.FixedStepSampler)]


@pytest.mark.parametrize("name", ["euler_maruyama", "ddpm", "dpm_solver", "unipc", "heun"])
def test_nan_inside_a_block_is_named_by_the_replay(name, sde):
    """40 steps on CPU, checked only at the ends of blocks of 16: a NaN from t < 0.31 (inside the second
    block) must name the step the per-step check (forced by a callback) names, not the block's end."""
    grid = torch.linspace(1.0, sde.eps, 41, dtype=torch.float64)
    messages = []
    for callback in (None, lambda info: None):
        with pytest.raises(S.NonFiniteError) as info:
            S.REGISTRY[name](grid=grid).sample(_nan_below(sde, 0.31), shape=SHAPE, generator=_gen(16), callback=callback)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    first_bad = int(torch.nonzero(grid[1:] < 0.31)[0]) if name == "heun" else int(torch.nonzero(grid[:-1] < 0.31)[0])
    assert f"step {first_bad} " in messages[0] and first_bad != 31, messages[0]  # (heun evaluates at s too)


@pytest.mark.parametrize("name", FIXED_STEP)
def test_checking_blocks_changes_no_sample(name, model):
    """The blocked check (no callback) and the per-step check (a callback) give the same samples bit for bit,
    so saving and restoring the generator state for a possible replay takes nothing from the random stream."""
    plain = build(name, steps=20).sample(model, shape=SHAPE, generator=_gen(17)).x
    seen = []
    watched = build(name, steps=20).sample(model, shape=SHAPE, generator=_gen(17), callback=seen.append).x
    assert seen and torch.equal(plain, watched)


def test_a_nan_the_replay_does_not_reproduce_names_the_block(sde):
    """A network that is NaN once and finite when asked again (not deterministic): the blocked check still
    stops, at the last step of the block in which it saw the NaN."""
    gmm, calls = reference_gmm(), {"n": 0}

    def score(x, t):
        calls["n"] += 1
        s = gmm.score(x, t.double(), sde)
        return torch.full_like(s, float("nan")) if calls["n"] == 5 else s

    grid = torch.linspace(1.0, sde.eps, 41, dtype=torch.float64)
    with pytest.raises(S.NonFiniteError, match=r"step 15 \(t = "):
        S.DDIM(grid=grid).sample(sd.ScoreModel.from_score_fn(score, sde), shape=SHAPE, generator=_gen(18))


def test_inf_in_x_T_rejected(model):
    x_T = torch.zeros(SHAPE)
    x_T[3, 1] = float("inf")
    with pytest.raises(ValueError, match="x_T"):
        S.DDIM(steps=STEPS).sample(model, x_T=x_T)


def test_non_finite_x_T_rejected(model):
    x_T = torch.zeros(SHAPE)
    x_T[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x_T"):
        S.EulerMaruyama(steps=STEPS).sample(model, x_T=x_T)


# ============================================================================ callback, images, model_kwargs


# the adapters (torchsde, torchdiffeq) step internally and report only the end of the integration
FIXED_STEP_NAMES = sorted(n for n, make in GRID_SAMPLERS.items() if isinstance(make("uniform"), S.FixedStepSampler))


@pytest.mark.parametrize("sampler_name", FIXED_STEP_NAMES)
def test_callback_sees_every_step_of_a_fixed_step_sampler(sampler_name, model):
    sampler = GRID_SAMPLERS[sampler_name]("uniform")
    infos = []
    out = sampler.sample(model, shape=SHAPE, generator=_gen(16), callback=infos.append)
    assert [info["i"] for info in infos] == list(range(len(out.times) - 1))
    assert [info["t"] for info in infos] == pytest.approx(out.times[1:].tolist(), abs=1e-12)
    assert all(info["x"].shape == SHAPE for info in infos)
    assert torch.equal(infos[-1]["x"], out.x)


@pytest.mark.parametrize("name", NAMES)
def test_callback_receives_i_t_x(name, model):
    infos = []
    out = build(name).sample(model, shape=SHAPE, generator=_gen(17), callback=infos.append)
    assert infos, "callback never called"
    for info in infos:
        assert {"i", "t", "x"} <= set(info)
        assert isinstance(info["i"], int) and isinstance(info["t"], float) and info["x"].shape == SHAPE
    assert infos[-1]["t"] == 0.0 and torch.equal(infos[-1]["x"], out.x)
    ts = [info["t"] for info in infos]
    assert ts == sorted(ts, reverse=True), "callback times must run from T down to 0"


IMAGE_SHAPE = (3, 2, 3, 3)


@pytest.fixture(scope="module")
def image_model(sde):
    d = 2 * 3 * 3
    g = _gen(18)
    gmm = GaussianMixture(torch.randn(2, d, generator=g, dtype=torch.float64), torch.tensor([0.3, 0.5], dtype=torch.float64))
    return gmm.score_model(sde)


@pytest.mark.parametrize("name", NAMES)
def test_images_keep_their_shape(name, image_model, sde):
    sampler = build(name)
    out = sampler.sample(image_model, shape=IMAGE_SHAPE, generator=_gen(19), return_trajectory=True)
    assert out.x.shape == IMAGE_SHAPE and torch.isfinite(out.x).all()
    assert all(x.shape == IMAGE_SHAPE for x in out.trajectory)
    x_T = sde.prior_sample(IMAGE_SHAPE, _gen(20))
    assert sampler.sample(image_model, x_T=x_T, generator=_gen(20)).x.shape == IMAGE_SHAPE


@pytest.mark.parametrize("name", NAMES)
def test_model_kwargs_reach_the_network(name, sde):
    counter = CountingScore(sde)
    label = object()
    build(name).sample(counter.model(), shape=SHAPE, generator=_gen(21), model_kwargs={"label": label, "scale": 2})
    assert counter.calls > 0
    assert all(kw.keys() == {"label", "scale"} and kw["label"] is label and kw["scale"] == 2 for kw in counter.kwargs)


# ============================================================================ memory


MEMORY_SHAPE = (37, 3)  # a shape no other tensor in the process has


def _live_state_tensors() -> int:
    gc.collect()
    numel = MEMORY_SHAPE[0] * MEMORY_SHAPE[1]
    with warnings.catch_warnings():  # isinstance on deprecated torch objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.numel() == numel)


def _live_after(sampler, model) -> int:
    """Live tensors of the state's size when the final callback fires (the end of sampling)."""
    counts = []
    sampler.sample(model, shape=MEMORY_SHAPE, generator=_gen(22),
                   callback=lambda info: counts.append(_live_state_tensors()) if info["t"] == 0.0 else None)
    assert len(counts) == 1
    return counts[0]


@pytest.fixture(scope="module")
def memory_model(sde):
    return GaussianMixture([[0.0, 0.5, -0.5]], [[0.3, 0.2, 0.5]]).score_model(sde)


@pytest.mark.parametrize("name", [n for n in NAMES if takes_steps(n) and n != "torchsde"])
def test_no_state_retained_per_step(name, memory_model):
    kwargs = {"method": "rk4"} if name == "probability_flow" else {}
    out = build(name, steps=10, **kwargs).sample(memory_model, shape=MEMORY_SHAPE, generator=_gen(23))
    assert out.trajectory is None
    few = _live_after(build(name, steps=10, **kwargs), memory_model)
    many = _live_after(build(name, steps=150, **kwargs), memory_model)
    assert many <= few + 1, f"{name}: {few} live state tensors after 10 steps, {many} after 150"


def test_torchsde_retains_only_a_bounded_brownian_cache(memory_model):
    """torchsde's BrownianInterval keeps an LRU cache of increments (state-sized); it must not grow
    with the number of steps: far fewer live tensors than steps."""
    for steps in (10, 600):
        assert _live_after(S.TorchSDE("euler", steps=steps), memory_model) < 300


def test_trajectory_only_when_asked(model):
    sampler = S.EulerMaruyama(steps=STEPS)
    assert sampler.sample(model, shape=SHAPE, generator=_gen(24)).trajectory is None
    out = sampler.sample(model, shape=SHAPE, generator=_gen(24), return_trajectory=True)
    assert len(out.trajectory) == len(out.times) == STEPS + 2
    assert torch.equal(out.trajectory[-1], out.x)


# ============================================================================ bad arguments


@pytest.mark.parametrize("steps", [0, -3, 2.5])
@pytest.mark.parametrize("name", [n for n in NAMES if takes_steps(n)])
def test_bad_steps_named(name, steps):
    with pytest.raises(ValueError, match="steps"):
        S.get(name, steps=steps)


@pytest.mark.parametrize(
    "make,argument",
    [
        (lambda: S.DDIM(eta=2.0), "eta"),
        (lambda: S.DDIM(eta=-0.1), "eta"),
        (lambda: S.PredictorCorrector(predictor="nope"), "predictor"),
        (lambda: S.PredictorCorrector(corrector="nope"), "corrector"),
        (lambda: S.PredictorCorrector(snr=0.0), "snr"),
        (lambda: S.PredictorCorrector(corrector_steps=-1), "corrector_steps"),
        (lambda: S.ProbabilityFlowODE(method="nope"), "method"),
        (lambda: S.ProbabilityFlowODE(rtol=0.0), "rtol"),
        (lambda: S.ProbabilityFlowODE(atol=-1.0), "atol"),
        (lambda: S.TorchSDE(method="nope"), "method"),
        (lambda: S.get("no_such_sampler"), "name"),
    ],
    ids=["eta=2", "eta<0", "predictor", "corrector", "snr", "corrector_steps", "ode-method", "rtol", "atol", "torchsde-method", "sampler-name"],
)
def test_bad_constructor_argument_named(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


@pytest.mark.parametrize("name", NAMES)
def test_bad_sample_arguments_named(name, model):
    sampler = build(name)
    with pytest.raises(ValueError, match="shape"):
        sampler.sample(model)  # neither shape nor x_T
    with pytest.raises(ValueError, match="shape"):
        sampler.sample(model, shape=(4, 2), x_T=torch.zeros(5, 2))
    with pytest.raises(TypeError, match="model"):
        sampler.sample(lambda x, t: x, shape=SHAPE)
    with pytest.raises(TypeError, match="callback"):
        sampler.sample(model, shape=SHAPE, callback="not callable")
    with pytest.raises(TypeError, match="x_T"):
        sampler.sample(model, x_T=torch.zeros(SHAPE, dtype=torch.long))


def test_registry_lists_and_builds_the_core_samplers():
    core = {"euler_maruyama", "reverse_diffusion", "predictor_corrector", "probability_flow", "torchsde", "ddpm", "ddim"}
    assert core <= set(S.available())
    assert S.available() == sorted(S.available())
    sampler = S.get("euler_maruyama", steps=17)
    assert isinstance(sampler, S.EulerMaruyama) and sampler.steps == 17


def test_progress_bar_is_off_by_default_and_shows_steps_and_nfe(capsys):
    model = sd.data.eight_gaussians().score_model(sd.VPSDE())
    sd.samplers.DDIM(steps=7).sample(model, shape=(4, 2), generator=torch.Generator().manual_seed(0))
    assert capsys.readouterr().err == ""
    seen = []
    out = sd.samplers.DDIM(steps=7).sample(model, shape=(4, 2), generator=torch.Generator().manual_seed(0), progress=True,
                                           callback=lambda info: seen.append(info["i"]))
    err = capsys.readouterr().err
    assert "DDIM" in err and "8/8" in err and f"nfe={out.nfe}" in err  # 7 steps and the final denoise
    assert seen[:7] == list(range(7)) and len(seen) == 8  # the user's callback still runs
    sd.samplers.AdaptiveUniPC(rtol=1e-2, atol=1e-2).sample(model, shape=(4, 2), generator=torch.Generator().manual_seed(0), progress=True)
    assert "AdaptiveUniPC" in capsys.readouterr().err
