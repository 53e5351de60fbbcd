"""A score model: a network, the quantity it predicts, and the SDE that gives the conversions.

With x_t = α x_0 + σ ε every view follows from any one (Ho et al. 2020; Salimans & Ho 2022):

    score s = −ε/σ,          x̂_0 = (x − σ ε)/α,
    v = α ε − σ x_0   ⇒   x̂_0 = (α x − σ v)/(α² + σ²),   ε = (σ x + α v)/(α² + σ²).

"edm" is Karras et al.'s preconditioning (2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Table 1), applied to the VE-equivalent state x̃ = x/α at σ̃ = σ/α of any linear SDE:

    x̂_0 = D(x̃; σ̃) = c_skip x̃ + c_out F_θ(c_in x̃, c_noise),
    c_skip = σ_d²/(σ̃² + σ_d²),  c_out = σ̃ σ_d/√(σ̃² + σ_d²),  c_in = 1/√(σ̃² + σ_d²),  c_noise = ¼ ln σ̃.

``time_input="log_snr"`` feeds the network the negative log-SNR γ = −2λ(t) on a fixed scale,
c = (γ − γ_lo)/(γ_hi − γ_lo) with (γ_lo, γ_hi) = :data:`LOG_SNR_INPUT_RANGE` (as VDM's ScoreUNet, Kingma et al.
2021, §5): the network then depends on t only through the SNR, so the continuous ELBO does not depend on the
schedule between its end points, and a network stays valid while a learned schedule changes.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ._checks import TimeLike, check_batch, per_sample, positive
from .sde import DiscreteVPSDE, LearnedVPSDE, LinearSDE

PREDICTIONS = ("eps", "score", "x0", "v", "edm")
TIME_INPUTS = ("continuous", "index", "log_snr")
#: (γ_lo, γ_hi) of the "log_snr" time input: fixed, so one SNR is one network input whatever the schedule
LOG_SNR_INPUT_RANGE = (-10.0, 10.0)


def log_snr_input(gamma: Tensor) -> Tensor:
    """The "log_snr" network input c = (γ − γ_lo)/(γ_hi − γ_lo) of γ = −log SNR (≈ [0.05, 1] on the default VP SDE)."""
    lo, hi = LOG_SNR_INPUT_RANGE
    return (gamma - lo) / (hi - lo)


Coef = Union[float, Tensor]


class Prediction:
    """Every view (ε, x̂_0, score) of one network evaluation at x, each computed on first use.

    Built from whichever views are known; the rest follow from x = α x̂_0 + σ ε and s = −ε/σ.
    A sampler that needs only one view pays for no other.
    """

    __slots__ = ("x", "alpha", "sigma", "_eps", "_x0", "_score")

    def __init__(self, x: Tensor, alpha: Coef, sigma: Coef, eps: Optional[Tensor] = None,
                 x0: Optional[Tensor] = None, score: Optional[Tensor] = None):
        if eps is None and x0 is None and score is None:
            raise ValueError("Prediction needs at least one of eps, x0, score")
        self.x, self.alpha, self.sigma = x, alpha, sigma
        self._eps, self._x0, self._score = eps, x0, score

    @property
    def eps(self) -> Tensor:
        if self._eps is None:
            if self._x0 is not None:
                self._eps = (self.x - self.alpha * self._x0) / self.sigma
            else:
                self._eps = -self.sigma * self._score
        return self._eps

    @property
    def x0(self) -> Tensor:
        if self._x0 is None:
            if self._score is not None and self._eps is None:
                self._x0 = (self.x + self.sigma**2 * self._score) / self.alpha
            else:
                self._x0 = (self.x - self.sigma * self.eps) / self.alpha
        return self._x0

    @property
    def score(self) -> Tensor:
        if self._score is None:
            self._score = self.eps * (-1.0 / self.sigma)
        return self._score


class _ScoreFn(nn.Module):
    """Wraps a plain function fn(x, t, **kwargs) -> score as a network."""

    def __init__(self, fn: Callable[..., Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return self.fn(x, t, **kwargs)


class ScoreModel(nn.Module):
    """``net(x, t, **model_kwargs)`` predicting ``prediction`` ∈ {"eps", "score", "x0", "v", "edm"} under ``sde``.

    ``time_input="continuous"`` feeds the network t ∈ [0, T] (shape (batch,), x's dtype);
    ``"index"`` feeds DDPM step indices i = round(N t − 1) of a :class:`DiscreteVPSDE`; ``"log_snr"`` feeds
    :func:`log_snr_input` of γ(t) = −2λ(t). ``None`` (default) is "log_snr" on a :class:`LearnedVPSDE`
    (prediction other than "edm", whose c_noise already is a function of the SNR) and "continuous" otherwise.
    ``prediction="edm"`` instead calls ``net(c_in x/α, c_noise)`` and returns x̂_0 = c_skip x/α + c_out net(…)
    with the data std ``sigma_data`` = σ_d (Karras et al. 2022; see the module docstring).
    """

    def __init__(self, net: Callable[..., Tensor], sde: LinearSDE, prediction: str = "eps", time_input: Optional[str] = None,
                 sigma_data: float = 0.5):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be callable net(x, t, **kwargs), got {type(net).__name__}")
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a sde_diffusion.LinearSDE, got {type(sde).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if time_input is None:
            time_input = "log_snr" if isinstance(sde, LearnedVPSDE) and prediction != "edm" else "continuous"
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {TIME_INPUTS}, got {time_input!r}")
        if time_input == "index" and not isinstance(sde, DiscreteVPSDE):
            raise ValueError("time_input='index' needs a DiscreteVPSDE (step indices are defined by its schedule)")
        if time_input in ("index", "log_snr") and prediction == "edm":
            raise ValueError(f"prediction='edm' feeds the network c_noise = ¼ ln σ̃, not time_input={time_input!r}: "
                             "use time_input='continuous'")
        self.net = net if isinstance(net, nn.Module) else _ScoreFn(net)
        self.sde = sde
        self.prediction = prediction
        self.time_input = time_input
        self.sigma_data = positive(sigma_data, "sigma_data")

    @classmethod
    def from_score_fn(cls, fn: Callable[..., Tensor], sde: LinearSDE) -> "ScoreModel":
        """A model from an analytic score fn(x, t, **kwargs) -> ∇ log p_t(x) (fn gets the time t itself)."""
        return cls(fn, sde, prediction="score", time_input="continuous")

    @classmethod
    def from_diffusers(cls, unet: nn.Module, scheduler: Any) -> "ScoreModel":
        """A diffusers ``unet(x, i).sample`` and its scheduler (or config) as a model (see :mod:`sde_diffusion.interop`)."""
        from .interop import from_diffusers

        return from_diffusers(unet, scheduler)

    @classmethod
    def from_kdiffusion(cls, denoiser: Callable[..., Tensor], sde: Optional[LinearSDE] = None) -> "ScoreModel":
        """A k-diffusion denoiser D(x̃, σ̃) as an x̂_0 model; ``sde=None`` is a VE SDE in σ̃ (see :mod:`sde_diffusion.interop`)."""
        from .interop import from_kdiffusion

        return from_kdiffusion(denoiser, sde)

    def with_net(self, net: nn.Module) -> "ScoreModel":
        """The same parametrization and SDE around another network: its DDP or compiled wrapper, its EMA copy."""
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._modules = {**self._modules, "net": net}
        return clone

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
        """The network's raw output (the ``prediction`` quantity; for "edm" F_θ(c_in x̃, c_noise))."""
        t64 = self.sde._time(t)
        check_batch(t64, x)
        if self.prediction == "edm":
            net_x, c_noise, _, _ = self._edm_scalings(x, *self._alpha_sigma(x, t64))
            return self.net(net_x, c_noise, **model_kwargs)
        return self.net(x, self._net_time(x, t64), **model_kwargs)

    # ----- unvalidated fast path for samplers: t is a float, or a float64 scalar or (batch,) tensor, in [0, T] -----
    def _net_time(self, x: Tensor, t: Union[float, Tensor]) -> Tensor:
        if self.time_input == "continuous" and not isinstance(t, Tensor):
            return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        t64 = torch.as_tensor(t, dtype=torch.float64)
        if self.time_input == "log_snr":  # before broadcasting: one schedule evaluation for one time
            t64 = log_snr_input(-2 * self.sde._log_snr(t64))
        t64 = t64.expand(x.shape[0]) if t64.dim() == 0 else t64
        if self.time_input == "index":
            return self.sde.step_index(t64).to(x.device)
        return t64.to(device=x.device, dtype=x.dtype)

    def _predict(
        self,
        x: Tensor,
        t: Union[float, Tensor],
        model_kwargs: Optional[Dict[str, Any]] = None,
        alpha: Optional[float] = None,
        sigma: Optional[float] = None,
        net_time: Optional[Tensor] = None,
    ) -> Prediction:
        """One evaluation; ``alpha``/``sigma`` may be passed when the caller already knows α(t), σ(t), and
        ``net_time`` (the network's time input, e.g. a differentiable :func:`log_snr_input`) likewise."""
        net = self._modules["net"]  # (not self.net: nn.Module's attribute lookup costs a few µs per call)
        net = net.fn if type(net) is _ScoreFn else net  # a plain function skips nn.Module's call machinery
        if self.prediction == "edm":
            if alpha is None or sigma is None:
                alpha, sigma = self._alpha_sigma(x, t)
            net_x, c_noise, c_skip, c_out = self._edm_scalings(x, alpha, sigma)
            out = _checked_output(net(net_x, c_noise, **(model_kwargs or {})), x)
            return Prediction(x, alpha, sigma, x0=c_skip * (x / alpha) + c_out * out)
        out = _checked_output(net(x, self._net_time(x, t) if net_time is None else net_time, **(model_kwargs or {})), x)
        if alpha is None or sigma is None:
            alpha, sigma = self._alpha_sigma(x, t)
        return _CONVERT[self.prediction](out, x, alpha, sigma)

    def _alpha_sigma(self, x: Tensor, t: Union[float, Tensor]) -> Tuple[Tensor, Tensor]:
        """α(t), σ(t) broadcast over x (x's dtype)."""
        t64 = torch.as_tensor(t, dtype=torch.float64)
        return per_sample(self.sde._log_alpha(t64).exp(), x), per_sample(self.sde._log_sigma(t64).exp(), x)

    def _edm_scalings(self, x: Tensor, alpha: Coef, sigma: Coef) -> Tuple[Tensor, Tensor, Coef, Coef]:
        """(c_in x̃, c_noise of shape (batch,), c_skip, c_out) at σ̃ = σ/α, x̃ = x/α (Karras et al. 2022, Table 1)."""
        sigma_tilde = sigma / alpha
        c_in = (sigma_tilde**2 + self.sigma_data**2) ** -0.5
        c_skip = self.sigma_data**2 * c_in**2
        c_out = sigma_tilde * self.sigma_data * c_in
        if isinstance(sigma_tilde, Tensor):
            c_noise = (0.25 * sigma_tilde.log()).reshape(-1).to(x.dtype).expand(x.shape[0])
        else:
            log_sigma_tilde = math.log(sigma_tilde) if sigma_tilde > 0 else -math.inf
            c_noise = torch.full((x.shape[0],), 0.25 * log_sigma_tilde, dtype=x.dtype, device=x.device)
        return (c_in / alpha) * x, c_noise, c_skip, c_out

    def extra_repr(self) -> str:
        return (f"prediction={self.prediction!r}, time_input={self.time_input!r}, sigma_data={self.sigma_data:g}, "
                f"sde={self.sde!r}")


def _checked_output(out: Tensor, x: Tensor) -> Tensor:
    if out.shape != x.shape:
        raise ValueError(f"net output has shape {tuple(out.shape)}, expected the input's shape {tuple(x.shape)}")
    return out


def _from_eps(eps: Tensor, x: Tensor, alpha: Coef, sigma: Coef) -> Prediction:
    return Prediction(x, alpha, sigma, eps=eps)


def _from_score(score: Tensor, x: Tensor, alpha: Coef, sigma: Coef) -> Prediction:
    return Prediction(x, alpha, sigma, score=score)


def _from_x0(x0: Tensor, x: Tensor, alpha: Coef, sigma: Coef) -> Prediction:
    return Prediction(x, alpha, sigma, x0=x0)


def _from_v(v: Tensor, x: Tensor, alpha: Coef, sigma: Coef) -> Prediction:
    norm = alpha**2 + sigma**2
    return Prediction(x, alpha, sigma, eps=(sigma * x + alpha * v) / norm, x0=(alpha * x - sigma * v) / norm)


_CONVERT = {"eps": _from_eps, "score": _from_score, "x0": _from_x0, "v": _from_v}
