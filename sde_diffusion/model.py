"""A score model: a network, the quantity it predicts, and the SDE that gives the conversions.

With x_t = α x_0 + σ ε every view follows from any one (Ho et al. 2020; Salimans & Ho 2022):

    score s = −ε/σ,          x̂_0 = (x − σ ε)/α,
    v = α ε − σ x_0   ⇒   x̂_0 = (α x − σ v)/(α² + σ²),   ε = (σ x + α v)/(α² + σ²).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional

import torch
from torch import Tensor, nn

from ._checks import TimeLike, check_batch, per_sample
from .sde import DiscreteVPSDE, LinearSDE

PREDICTIONS = ("eps", "score", "x0", "v")
TIME_INPUTS = ("continuous", "index")


class Prediction(NamedTuple):
    """Every view of one network evaluation."""

    eps: Tensor
    x0: Tensor
    score: Tensor


class _ScoreFn(nn.Module):
    """Wraps a plain function fn(x, t, **kwargs) -> score as a network."""

    def __init__(self, fn: Callable[..., Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return self.fn(x, t, **kwargs)


class ScoreModel(nn.Module):
    """``net(x, t, **model_kwargs)`` predicting ``prediction`` ∈ {"eps", "score", "x0", "v"} under ``sde``.

    ``time_input="continuous"`` feeds the network t ∈ [0, T] (shape (batch,), x's dtype);
    ``"index"`` feeds DDPM step indices i = round(N t − 1) of a :class:`DiscreteVPSDE`.
    """

    def __init__(self, net: Callable[..., Tensor], sde: LinearSDE, prediction: str = "eps", time_input: str = "continuous"):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be callable net(x, t, **kwargs), got {type(net).__name__}")
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a sde_diffusion.LinearSDE, got {type(sde).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {TIME_INPUTS}, got {time_input!r}")
        if time_input == "index" and not isinstance(sde, DiscreteVPSDE):
            raise ValueError("time_input='index' needs a DiscreteVPSDE (step indices are defined by its schedule)")
        self.net = net if isinstance(net, nn.Module) else _ScoreFn(net)
        self.sde = sde
        self.prediction = prediction
        self.time_input = time_input

    @classmethod
    def from_score_fn(cls, fn: Callable[..., Tensor], sde: LinearSDE) -> "ScoreModel":
        """A model from an analytic score fn(x, t, **kwargs) -> ∇ log p_t(x)."""
        return cls(fn, sde, prediction="score")

    # ----- views (validated public API) -----
    def predict(self, x: Tensor, t: TimeLike, **model_kwargs: Any) -> Prediction:
        """One network evaluation, returned as (eps, x0, score)."""
        t64 = self.sde._time(t)
        check_batch(t64, x)
        return self._predict(x, t64, model_kwargs)

    def score(self, x: Tensor, t: TimeLike, **model_kwargs: Any) -> Tensor:
        """s_θ(x, t) ≈ ∇_x log p_t(x)."""
        return self.predict(x, t, **model_kwargs).score

    def eps(self, x: Tensor, t: TimeLike, **model_kwargs: Any) -> Tensor:
        """ε_θ(x, t) = −σ(t) s_θ(x, t)."""
        return self.predict(x, t, **model_kwargs).eps

    def x0(self, x: Tensor, t: TimeLike, **model_kwargs: Any) -> Tensor:
        """Tweedie's denoised estimate x̂_0 = (x + σ² s_θ)/α."""
        return self.predict(x, t, **model_kwargs).x0

    def forward(self, x: Tensor, t: TimeLike, **model_kwargs: Any) -> Tensor:
        """The network's raw output (the ``prediction`` quantity)."""
        t64 = self.sde._time(t)
        check_batch(t64, x)
        return self.net(x, self._net_time(x, t64), **model_kwargs)

    # ----- unvalidated fast path for samplers: t64 is a float64 scalar or (batch,) tensor in [0, T] -----
    def _net_time(self, x: Tensor, t64: Tensor) -> Tensor:
        t64 = t64.expand(x.shape[0]) if t64.dim() == 0 else t64
        if self.time_input == "index":
            return self.sde.step_index(t64).to(x.device)
        return t64.to(device=x.device, dtype=x.dtype)

    def _predict(self, x: Tensor, t64: Tensor, model_kwargs: Optional[Dict[str, Any]] = None) -> Prediction:
        out = self.net(x, self._net_time(x, t64), **(model_kwargs or {}))
        if out.shape != x.shape:
            raise ValueError(f"net output has shape {tuple(out.shape)}, expected the input's shape {tuple(x.shape)}")
        alpha = per_sample(self.sde._log_alpha(t64).exp(), x)
        sigma = per_sample(self.sde._log_sigma(t64).exp(), x)
        return _CONVERT[self.prediction](out, x, alpha, sigma)

    def extra_repr(self) -> str:
        return f"prediction={self.prediction!r}, time_input={self.time_input!r}, sde={self.sde!r}"


def _from_eps(eps: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Prediction:
    return Prediction(eps, (x - sigma * eps) / alpha, -eps / sigma)


def _from_score(score: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Prediction:
    return Prediction(-sigma * score, (x + sigma**2 * score) / alpha, score)


def _from_x0(x0: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Prediction:
    eps = (x - alpha * x0) / sigma
    return Prediction(eps, x0, -eps / sigma)


def _from_v(v: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Prediction:
    norm = alpha**2 + sigma**2
    eps = (sigma * x + alpha * v) / norm
    return Prediction(eps, (alpha * x - sigma * v) / norm, -eps / sigma)


_CONVERT = {"eps": _from_eps, "score": _from_score, "x0": _from_x0, "v": _from_v}
