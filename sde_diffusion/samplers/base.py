"""The sampler contract and the one sampling loop.

Every sampler is called the same way::

    out = sampler.sample(model, shape=(n, 2), generator=g)   # or x_T=...; model_kwargs=...; callback=...
    out.x, out.nfe

A fixed-step sampler is a time grid plus a *step rule* (``step(ctx, x, interval)``), and the loop
that walks the grid, checks the state, reports progress and finishes with the Tweedie denoise
x̂_0(x, eps) lives once, here. Randomness comes only from ``generator``: x_T is drawn first as
``sde.prior_sample(shape, generator)``, then each stochastic step draws one
``torch.randn(x.shape, generator=generator)`` in step order.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .._checks import positive_int
from ..model import Prediction, ScoreModel
from ..sde import LinearSDE, randn
from .exponential import Point
from .grids import GridLike, make_grid

Callback = Callable[[Dict[str, Any]], None]
X0Transform = Callable[[Tensor], Tensor]


class NonFiniteError(FloatingPointError):
    """NaN or Inf appeared in the sampler state; the message names the step and the time."""


@dataclass
class Samples:
    """What every sampler returns."""

    x: Tensor  #: the samples
    nfe: int  #: network evaluations used (the final denoise included)
    times: Tensor  #: the times the state visited, float64, from T down
    trajectory: Optional[List[Tensor]] = None  #: states at ``times`` (only when asked for)


@dataclass(frozen=True)
class Interval:
    """One step of a grid, from t down to s < t, with the schedule at both ends (float64 numbers)."""

    i: int
    t: float
    s: float
    alpha_t: float
    sigma_t: float
    alpha_s: float
    sigma_s: float
    f_t: float
    g2_t: float
    lambda_t: float
    lambda_s: float

    @property
    def dt(self) -> float:
        """s − t (negative: time runs backwards)."""
        return self.s - self.t

    @property
    def h(self) -> float:
        """λ_s − λ_t > 0: the step in log-SNR."""
        return self.lambda_s - self.lambda_t

    @property
    def alpha_ts(self) -> float:
        """α_{t|s} = α_t/α_s of the forward kernel x_t | x_s."""
        return self.alpha_t / self.alpha_s

    @cached_property
    def start(self) -> Point:
        """The schedule at t, as the exponential integrators take it."""
        return Point(self.t, self.alpha_t, self.sigma_t, self.lambda_t)

    @cached_property
    def end(self) -> Point:
        """The schedule at s."""
        return Point(self.s, self.alpha_s, self.sigma_s, self.lambda_s)

    @property
    def var_ts(self) -> float:
        """σ²_{t|s} = σ_t² − α_{t|s}² σ_s² of the forward kernel x_t | x_s."""
        return max(self.sigma_t**2 - self.alpha_ts**2 * self.sigma_s**2, 0.0)


def intervals(sde: LinearSDE, ts: Tensor) -> List[Interval]:
    """The schedule along a decreasing grid, computed once in float64."""
    log_alpha, log_sigma = sde._log_alpha(ts), sde._log_sigma(ts)
    alpha, sigma, lam = log_alpha.exp().tolist(), log_sigma.exp().tolist(), (log_alpha - log_sigma).tolist()
    f, g2, t = sde._f(ts).tolist(), sde._g2(ts).tolist(), ts.tolist()
    return [
        Interval(i, t[i], t[i + 1], alpha[i], sigma[i], alpha[i + 1], sigma[i + 1], f[i], g2[i], lam[i], lam[i + 1])
        for i in range(len(t) - 1)
    ]


class SamplingContext:
    """Per-call state: the model, its kwargs, the generator, the NFE count, and scratch for multistep rules."""

    def __init__(
        self,
        model: ScoreModel,
        model_kwargs: Optional[Dict[str, Any]],
        generator: Optional[torch.Generator],
        x0_transform: Optional[X0Transform] = None,
        callback: Optional[Callback] = None,
        trajectory: Optional[List[Tensor]] = None,
        owner: str = "sampler",
    ):
        self.model = model
        self.sde = model.sde
        self.model_kwargs = model_kwargs or {}
        self.generator = generator
        self.x0_transform = x0_transform
        self.callback = callback
        self.trajectory = trajectory
        self.guard = FiniteGuard(owner)
        self.nfe = 0
        self.state: Dict[str, Any] = {}
        #: α(t), σ(t) at times the sampler knows in advance (its grid), so evaluations there skip recomputing them
        self.schedule: Dict[float, tuple] = {}

    def remember_schedule(self, steps: List["Interval"]) -> None:
        for iv in steps:
            self.schedule[iv.t] = (iv.alpha_t, iv.sigma_t)
            self.schedule[iv.s] = (iv.alpha_s, iv.sigma_s)

    def predict(self, x: Tensor, t: Union[float, Tensor]) -> Prediction:
        """One network evaluation (counted) at time t: a float, or a float64 tensor of shape (batch,)."""
        self.nfe += 1
        alpha, sigma = (None, None) if isinstance(t, Tensor) else self.schedule.get(t, (None, None))
        pred = self.model._predict(x, t, self.model_kwargs, alpha, sigma)
        if self.x0_transform is None:
            return pred
        return Prediction(x, pred.alpha, pred.sigma, x0=self.x0_transform(pred.x0))

    def score(self, x: Tensor, t: Union[float, Tensor]) -> Tensor:
        return self.predict(x, t).score

    def eps(self, x: Tensor, t: Union[float, Tensor]) -> Tensor:
        return self.predict(x, t).eps

    def x0(self, x: Tensor, t: Union[float, Tensor]) -> Tensor:
        return self.predict(x, t).x0

    def noise(self, x: Tensor) -> Tensor:
        """One ``torch.randn(x.shape, generator=generator)``, on x's device and dtype."""
        return randn(x.shape, self.generator, x.device, x.dtype)

    def visit(self, x: Tensor, i: int, t_from: float, t_to: float) -> None:
        """After each step: stop on NaN/Inf, record the state, report to the callback."""
        self.guard(x, i, t_from, t_to)
        if self.trajectory is not None:
            self.trajectory.append(x)
        if self.callback is not None:
            self.callback({"i": i, "t": t_to, "x": x})


class FiniteGuard:
    """Stops sampling at the first NaN/Inf, naming the step and t.

    The test is ``isfinite(x.sum())`` (one read of the state; NaN and ±Inf propagate into the sum).
    A fixed-step loop on CPU reads only some of the states (see :func:`walk`).
    On CPU it is checked at once; on an accelerator the sums are queued and checked every
    ``every`` steps, so the loop does not synchronise with the device at each step.
    """

    def __init__(self, owner: str, every: int = 16):
        self.owner, self.every = owner, every
        self._pending: List[tuple] = []

    def __call__(self, x: Tensor, i: int, t_from: float, t_to: float) -> None:
        if x.device.type == "cpu":
            if not finite(x):
                self._fail(i, t_from, t_to)
            return
        self._pending.append((x.sum(), i, t_from, t_to))
        if len(self._pending) >= self.every:
            self.flush()

    def check(self, x: Tensor, i: int, t_from: float, t_to: float) -> None:
        """Check x now, on any device (after what is queued)."""
        self.flush()
        if not finite(x):
            self._fail(i, t_from, t_to)

    def flush(self) -> None:
        if not self._pending:
            return
        finite = torch.isfinite(torch.stack([p[0] for p in self._pending])).tolist()
        pending, self._pending = self._pending, []
        for ok, (_, i, t_from, t_to) in zip(finite, pending):
            if not ok:
                self._fail(i, t_from, t_to)

    def _fail(self, i: int, t_from: float, t_to: float) -> None:
        raise NonFiniteError(f"{self.owner}: NaN or Inf in the state after step {i} (t = {t_from:.6g} -> {t_to:.6g})")


def finite(x: Tensor) -> bool:
    """Whether every entry of x is finite: one summation, and the exact test only when the sum is not finite."""
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def snapshot_state(state: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of a sampler's scratch state deep enough for the in-place list updates multistep rules make."""
    return {k: list(v) if isinstance(v, list) else v for k, v in state.items()}


StepRule = Callable[[SamplingContext, Tensor, Interval], Tensor]


def walk(ctx: SamplingContext, x: Tensor, steps: Sequence[Interval], rule: StepRule, block: int = 16) -> Tensor:
    """x after ``rule`` over ``steps``, stopping at the first NaN/Inf with its step named.

    Every step is visited (checked, recorded, reported) when anything watches the steps (a callback, a
    trajectory, an x̂_0 transform), on an accelerator (whose checks are queued, see :class:`FiniteGuard`),
    or with a list of per-sample generators. Otherwise, on CPU, where reading the state is what a check
    costs, only the last state of each ``block`` of steps is read. The step rules update the state by
    linear combinations of itself and the network's outputs, so a NaN/Inf, once in it, stays in it
    (NaN·0 and Inf − Inf are NaN); when a block's last state fails, the block is replayed from its
    first state, scratch state and generator state, checking each step, to name the first bad one.
    """
    dense = (ctx.callback is not None or ctx.trajectory is not None or ctx.x0_transform is not None
             or x.device.type != "cpu" or isinstance(ctx.generator, (list, tuple)))
    if dense:
        for iv in steps:
            x = rule(ctx, x, iv)
            ctx.visit(x, iv.i, iv.t, iv.s)
        return x
    rng = ctx.generator if ctx.generator is not None else torch.default_generator
    for first in range(0, len(steps), block):
        part = steps[first:first + block]
        start, rng_state, state = x, rng.get_state(), snapshot_state(ctx.state)
        for iv in part:
            x = rule(ctx, x, iv)
        if finite(x):
            continue
        x = start
        rng.set_state(rng_state)
        ctx.state.clear()
        ctx.state.update(state)
        for iv in part:
            x = rule(ctx, x, iv)
            ctx.guard.check(x, iv.i, iv.t, iv.s)
        last = part[-1]  # the replay came out finite: a network that is not deterministic
        ctx.guard._fail(last.i, last.t, last.s)
    return x


class Sampler(ABC):
    """Base of every sampler: validates the call, draws x_T, runs ``_run`` without autograd."""

    #: the registry name (``samplers.get(name)``)
    name: str = ""
    #: optional clipping of x̂_0 (see :mod:`.thresholding`); off by default
    thresholding: Optional[X0Transform] = None

    def sample(
        self,
        model: ScoreModel,
        shape: Optional[Sequence[int]] = None,
        x_T: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        callback: Optional[Callback] = None,
        return_trajectory: bool = False,
        device: Optional[torch.device | str] = None,
        dtype: torch.dtype = torch.float32,
        progress: bool = False,
    ) -> Samples:
        """Draw samples from ``model`` by integrating from T (x_T, or a prior draw of ``shape``) to eps.

        ``progress=True`` shows a tqdm bar on stderr with the steps done, the NFE so far and the current t.
        """
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be a sde_diffusion.ScoreModel, got {type(model).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable callback(info: dict)")
        x = self._initial_state(model, shape, x_T, generator, device, dtype)
        trajectory: Optional[List[Tensor]] = [x] if return_trajectory else None
        ctx = SamplingContext(model, model_kwargs, generator, self.thresholding, callback, trajectory, type(self).__name__)
        bar = _progress_bar(ctx, self.expected_steps(model.sde)) if progress else None
        try:
            with torch.no_grad():
                x, times = self._run(ctx, x)
        finally:
            if bar is not None:
                bar.close()
        ctx.guard.flush()
        return Samples(x=x, nfe=ctx.nfe, times=times, trajectory=trajectory)

    def expected_steps(self, sde: LinearSDE) -> Optional[int]:
        """Steps the sampler will take (for a progress bar), or None when it chooses them as it goes."""
        return None

    @staticmethod
    def _initial_state(model, shape, x_T, generator, device, dtype) -> Tensor:
        if x_T is not None:
            if not isinstance(x_T, Tensor) or not x_T.is_floating_point():
                raise TypeError("x_T must be a floating-point tensor")
            if shape is not None and tuple(shape) != tuple(x_T.shape):
                raise ValueError(f"shape {tuple(shape)} does not match x_T's shape {tuple(x_T.shape)}")
            if x_T.dim() < 1 or x_T.shape[0] == 0:
                raise ValueError(f"x_T must have a non-empty batch dimension, got shape {tuple(x_T.shape)}")
            if not finite(x_T):
                raise ValueError("x_T contains NaN or Inf")
            return x_T
        if shape is None:
            raise ValueError("either shape or x_T must be given")
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else "cpu"
        return model.sde.prior_sample(shape, generator, device=device, dtype=dtype)

    @abstractmethod
    def _run(self, ctx: SamplingContext, x: Tensor):
        """Integrate from T to the end, calling ``ctx.visit`` after each step; return (x, times visited)."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def _progress_bar(ctx: SamplingContext, total: Optional[int]):
    """A tqdm bar fed by the context's callback: one tick per step, with the NFE so far and t."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=ctx.guard.owner, unit="step", dynamic_ncols=True)
    user = ctx.callback

    def tick(info: Dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix(nfe=ctx.nfe, t=f"{info['t']:.4g}", refresh=False)
        if user is not None:
            user(info)

    ctx.callback = tick
    return bar


class FixedStepSampler(Sampler):
    """A time grid and a step rule; subclasses implement :meth:`step` beside its equation."""

    def __init__(
        self,
        steps: int = 1000,
        grid: GridLike = "uniform",
        denoise: bool = True,
        thresholding: Optional[X0Transform] = None,
    ):
        positive_int(steps, "steps")
        if thresholding is not None and not callable(thresholding):
            raise TypeError("thresholding must be None or callable x0 -> x0 (StaticThreshold, DynamicThreshold)")
        self.steps = int(steps)
        self.grid = grid
        self.denoise = bool(denoise)
        self.thresholding = thresholding

    def times(self, sde: LinearSDE) -> Tensor:
        """The decreasing grid this sampler walks (an explicit tensor overrides ``steps``)."""
        return make_grid(self.grid, sde, self.steps)

    def expected_steps(self, sde: LinearSDE) -> Optional[int]:
        return len(self.times(sde)) - 1 + int(self.denoise)  # the final denoise is reported as a step too

    def _run(self, ctx, x):
        ts = self.times(ctx.sde)
        ctx.state["steps"] = len(ts) - 1  # the steps actually walked (an explicit grid overrides ``steps``)
        steps = intervals(ctx.sde, ts)
        ctx.remember_schedule(steps)
        x = walk(ctx, x, steps, self.step)
        return finish(ctx, x, ts, self.denoise)

    @abstractmethod
    def step(self, ctx: SamplingContext, x: Tensor, interval: Interval) -> Tensor:
        """Advance x from interval.t to interval.s."""


def finish(ctx: SamplingContext, x: Tensor, ts: Tensor, denoise: bool):
    """End of every sampler: optionally the Tweedie denoise x̂_0(x, t_end) (one counted evaluation)."""
    if not denoise:
        return x, ts
    t_end = float(ts[-1])
    x = ctx.x0(x, t_end)
    ctx.visit(x, len(ts) - 1, t_end, 0.0)
    return x, torch.cat([ts, ts.new_zeros(1)])
