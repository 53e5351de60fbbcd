"""Denoising score-matching losses (Vincent 2011; Song et al. 2021), one small callable per weighting.

With x_t = α x_0 + σ ε the kernel score is ∇ log p_{0t}(x_t | x_0) = −ε/σ, and ε_θ − ε = −σ (s_θ + ε/σ).
With t uniform on [eps, T] each per-sample loss below is an unbiased estimator of

    J_w = 1/(T − eps) ∫_eps^T w(t) E‖s_θ(x_t, t) + ε/σ(t)‖² dt        (‖·‖² = mean over non-batch dims)

for the weight w beside it:

    "eps"         ‖ε_θ − ε‖²                      w = σ²                   Ho et al. 2020 (L_simple)
    "score"       ‖σ s_θ + ε‖²                    w = σ²                   score_sde's λ = σ² (Song et al. 2021)
    "likelihood"  g² ‖s_θ + ε/σ‖²                 w = g²                   Song, Durkan, Murray & Ermon 2021
        importance=True draws t ∝ g²/σ² = −2 dλ/dt, i.e. λ uniform on [λ(T), λ(eps)] and t = t(λ); the
        importance-weighted estimator of the same J_w is 2(λ(eps) − λ(T))/(T − eps) · ‖ε_θ − ε‖².
    "v"           ‖v_θ − v‖², v = α ε − σ x_0     w = (α² + σ²)² σ²/α²     Salimans & Ho 2022
        since v_θ − v = α(ε_θ − ε) − σ(x̂_0 − x_0) = (α² + σ²)/α · (ε_θ − ε).
    "edm"         λ(σ̃) ‖x̂_0 − x_0‖²,  λ(σ̃) = (σ̃² + σ_d²)/(σ̃ σ_d)²,  σ̃ = σ/α      Karras et al. 2022
        with ln σ̃ ~ N(p_mean, p_std²), clamped to the SDE's range [σ̃(eps), σ̃(T)] (the tails land on eps
        and T). As x̂_0 − x_0 = −σ̃ (ε_θ − ε), this is unbiased not for J_w but for the integral over that
        log-normal density p(t) of t:  ∫ p(t) w(t) E‖s_θ + ε/σ‖² dt  with w = (σ̃² + σ_d²) σ²/σ_d².
        σ_d is ``model.sigma_data`` (0.5 if the model has none).

Time draws start from u ∈ [0, 1)^B: t_sampling="uniform" is one ``rand(B)``; "stratified" is VDM's
low-discrepancy sampler (Kingma et al. 2021), u_i = (u_0 + i/B) mod 1 from a single u_0. Then
t = eps + (T − eps) u; or λ = λ(T) + (λ(eps) − λ(T)) u (likelihood with importance); or n = Φ⁻¹(u),
ln σ̃ = p_mean + p_std n (edm). On a discrete-time SDE (``sde.num_steps`` = N, DDPM) the uniform draw is
the step i = ⌊N u⌋ ∈ {0, …, N−1} at t = (i + 1)/N: Ho et al.'s discrete loss, unbiased for the step
average (1/N) Σ_i w(t_i) E‖…‖² (the λ and log-normal draws stay continuous on every SDE).

Order of randomness: u first (one draw of shape (B,), or the single u_0), then
``noise = randn(x0.shape, generator)``. An explicit ``t`` or ``noise`` replaces its draw (nothing is drawn for it).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ._checks import check_batch, check_finite, per_sample, positive
from .model import Prediction, ScoreModel
from .sde import LinearSDE, randn

F64 = torch.float64
T_SAMPLINGS = ("uniform", "stratified")
REDUCTIONS = ("mean", "none")


class _Options(NamedTuple):
    importance: bool
    p_mean: float
    p_std: float
    sigma_data: float


class _Terms(NamedTuple):
    """What a weighting's loss sees: clean data, noise, schedule at t (broadcast, x0's dtype), the prediction at x_t."""

    sde: LinearSDE
    t: Tensor  # float64, (B,)
    x0: Tensor
    noise: Tensor
    alpha: Tensor
    sigma: Tensor
    pred: Prediction
    opts: _Options


def _log_snr_range(sde: LinearSDE) -> Tuple[float, float]:
    """(λ(eps), λ(T)), the largest and the smallest log-SNR of the training range."""
    lam_eps, lam_T = sde._log_snr(torch.tensor([sde.eps, sde.T], dtype=F64)).tolist()
    return lam_eps, lam_T


# ----- time rules: u ∈ [0, 1)^B ↦ t (float64, (B,)) -----
def _uniform_times(sde: LinearSDE, u: Tensor, opts: _Options) -> Tensor:
    if sde.num_steps is not None:
        return ((u * sde.num_steps).floor().clamp(max=sde.num_steps - 1) + 1) / sde.num_steps
    return sde.eps + (sde.T - sde.eps) * u


def _log_snr_times(sde: LinearSDE, u: Tensor, opts: _Options) -> Tensor:
    lam_eps, lam_T = _log_snr_range(sde)
    return sde._t_of_log_snr(lam_T + (lam_eps - lam_T) * u).clamp(sde.eps, sde.T)


def _likelihood_times(sde: LinearSDE, u: Tensor, opts: _Options) -> Tensor:
    return (_log_snr_times if opts.importance else _uniform_times)(sde, u, opts)


def _log_normal_times(sde: LinearSDE, u: Tensor, opts: _Options) -> Tensor:
    tiny = torch.finfo(F64).eps
    log_sigma_tilde = opts.p_mean + opts.p_std * torch.special.ndtri(u.clamp(tiny, 1 - tiny))
    lam_eps, lam_T = _log_snr_range(sde)
    return sde._t_of_log_snr((-log_sigma_tilde).clamp(lam_T, lam_eps)).clamp(sde.eps, sde.T)


# ----- per-element losses, one per weighting (the weights are in the module docstring) -----
def _eps_loss(b: _Terms) -> Tensor:
    return (b.pred.eps - b.noise) ** 2


def _score_loss(b: _Terms) -> Tensor:
    return (b.sigma * b.pred.score + b.noise) ** 2


def _likelihood_loss(b: _Terms) -> Tensor:
    if b.opts.importance:
        lam_eps, lam_T = _log_snr_range(b.sde)
        return 2 * (lam_eps - lam_T) / (b.sde.T - b.sde.eps) * (b.pred.eps - b.noise) ** 2
    return per_sample(b.sde._g2(b.t), b.x0) * (b.pred.score + b.noise / b.sigma) ** 2


def _v_loss(b: _Terms) -> Tensor:
    v = b.alpha * b.noise - b.sigma * b.x0
    return (b.alpha * b.pred.eps - b.sigma * b.pred.x0 - v) ** 2


def _edm_loss(b: _Terms) -> Tensor:
    sigma_tilde2, sigma_data2 = (b.sigma / b.alpha) ** 2, b.opts.sigma_data**2
    return (sigma_tilde2 + sigma_data2) / (sigma_tilde2 * sigma_data2) * (b.pred.x0 - b.x0) ** 2


TimeRule = Callable[[LinearSDE, Tensor, _Options], Tensor]
_WEIGHTINGS: Dict[str, Tuple[TimeRule, Callable[[_Terms], Tensor]]] = {
    "eps": (_uniform_times, _eps_loss),
    "score": (_uniform_times, _score_loss),
    "likelihood": (_likelihood_times, _likelihood_loss),
    "v": (_uniform_times, _v_loss),
    "edm": (_log_normal_times, _edm_loss),
}
WEIGHTINGS = tuple(_WEIGHTINGS)


def _unit_draws(batch: int, t_sampling: str, generator: Optional[torch.Generator]) -> Tensor:
    device = generator.device if generator is not None else "cpu"
    if t_sampling == "stratified":
        u0 = torch.rand(1, generator=generator, device=device, dtype=F64)
        return ((u0 + torch.arange(batch, device=device, dtype=F64) / batch) % 1).cpu()
    return torch.rand(batch, generator=generator, device=device, dtype=F64).cpu()


def dsm_loss(model: ScoreModel, x0: Tensor, weighting: str = "eps", *, t_sampling: str = "uniform",
             importance: bool = True, generator: Optional[torch.Generator] = None,
             model_kwargs: Optional[Dict[str, Any]] = None, t: Optional[Tensor] = None,
             noise: Optional[Tensor] = None, reduction: str = "mean", p_mean: float = -1.2,
             p_std: float = 1.2) -> Tensor:
    """Denoising score-matching loss of ``model`` on the clean batch ``x0``, with autograd to its parameters.

    ``weighting`` ∈ {"eps", "score", "likelihood", "v", "edm"} (the module docstring gives each estimator
    and its weight w(t)); ``t_sampling`` ∈ {"uniform", "stratified"}; ``importance`` applies to "likelihood";
    ``p_mean``/``p_std`` to "edm". The model is evaluated once, at x_t = α x0 + σ ε. Returns the mean over
    the batch of the per-sample losses (means over non-batch dims), or those (B,) with ``reduction="none"``.
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sde_diffusion.ScoreModel, got {type(model).__name__}")
    for name, value, valid in (("weighting", weighting, WEIGHTINGS), ("t_sampling", t_sampling, T_SAMPLINGS),
                               ("reduction", reduction, REDUCTIONS)):
        if value not in valid:
            raise ValueError(f"{name} must be one of {valid}, got {value!r}")
    if not isinstance(x0, Tensor) or not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor of shape (batch, ...), got {type(x0).__name__}"
                        + (f" of dtype {x0.dtype}" if isinstance(x0, Tensor) else ""))
    if x0.dim() == 0 or x0.shape[0] == 0:
        raise ValueError(f"x0 must have a non-empty batch dimension, got shape {tuple(x0.shape)}")
    check_finite(x0, "x0")
    if not math.isfinite(float(p_mean)):
        raise ValueError(f"p_mean must be a finite number, got {p_mean}")
    sde, batch = model.sde, x0.shape[0]
    opts = _Options(bool(importance), float(p_mean), positive(p_std, "p_std"), float(getattr(model, "sigma_data", 0.5)))
    time_rule, loss = _WEIGHTINGS[weighting]

    if t is None:
        t64 = time_rule(sde, _unit_draws(batch, t_sampling, generator), opts)
    else:
        t64 = sde._time(t, "t")
        check_batch(t64, x0, "t", "x0")
        t64 = t64.expand(batch) if t64.dim() == 0 else t64
    if noise is None:
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
    elif not isinstance(noise, Tensor) or noise.shape != x0.shape:
        raise ValueError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}, got "
                         + (f"shape {tuple(noise.shape)}" if isinstance(noise, Tensor) else type(noise).__name__))
    else:
        check_finite(noise, "noise")

    alpha, sigma = per_sample(sde._log_alpha(t64).exp(), x0), per_sample(sde._log_sigma(t64).exp(), x0)
    pred = model._predict(alpha * x0 + sigma * noise, t64, model_kwargs, alpha, sigma)
    per_sample_loss = loss(_Terms(sde, t64, x0, noise, alpha, sigma, pred, opts)).reshape(batch, -1).mean(1)
    return per_sample_loss.mean() if reduction == "mean" else per_sample_loss
