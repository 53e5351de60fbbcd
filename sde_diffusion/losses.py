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

:func:`vdm_loss` is the whole continuous-time negative ELBO per sample, in nats, with t uniform (Kingma et al.
2021, "Variational Diffusion Models"); it also trains a :class:`~sde_diffusion.sde.LearnedVPSDE`'s schedule.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ._checks import check_batch, check_finite, checked_samples, per_sample, positive
from .model import Prediction, ScoreModel, log_snr_input
from .sde import LearnedVPSDE, LinearSDE, randn

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


# ----- VDM: the continuous negative ELBO with t uniform, and a learnable schedule -----
def _vdm_schedule(sde: LinearSDE, t: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tuple[Tensor, ...]]:
    """(α, σ, γ, γ') at t, float64 (B,), and the tensors only the schedule's interior sets (for the variance trick).

    γ = log(σ²/α²) = −2λ; on a LearnedVPSDE all are differentiable (α² = sigmoid(−γ), σ² = sigmoid(γ)), else
    γ' = g²/σ² (= −2 dλ/dt for any linear SDE).
    """
    if isinstance(sde, LearnedVPSDE):
        r, dr = sde.gamma_shape(t)
        span = sde.gamma_max - sde.gamma_min
        gamma = sde.gamma_min + span * r
        return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt(), gamma, span * dr, (r, dr)
    log_alpha, log_sigma = sde._log_alpha(t), sde._log_sigma(t)
    return log_alpha.exp(), log_sigma.exp(), 2 * (log_sigma - log_alpha), sde._g2(t) / (2 * log_sigma).exp(), ()


def _vdm_end(sde: LinearSDE, at: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(α, σ, γ) at eps ("eps") or T ("T"); on a LearnedVPSDE exactly its end-point parameters."""
    if isinstance(sde, LearnedVPSDE):
        gamma = sde.gamma_min if at == "eps" else sde.gamma_max
        return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt(), gamma
    t = torch.tensor(sde.eps if at == "eps" else sde.T, dtype=F64)
    log_alpha, log_sigma = sde._log_alpha(t), sde._log_sigma(t)
    return log_alpha.exp(), log_sigma.exp(), 2 * (log_sigma - log_alpha)


def vdm_loss(model: ScoreModel, x0: Tensor, *, t_sampling: str = "stratified", variance_trick: bool = False,
             generator: Optional[torch.Generator] = None, model_kwargs: Optional[Dict[str, Any]] = None,
             t: Optional[Tensor] = None, noise: Optional[Tensor] = None) -> Tensor:
    """VDM's per-sample negative ELBO in nats, shape (B,), with autograd to the network and a learned schedule.

        L = KL(N(α_T x_0, σ_T² I) ‖ N(0, prior_std² I)) − log N(x_0; x̂_0(x_eps, eps), e^{γ(eps)} I)
            + ½ (T − eps) γ'(t) ‖ε − ε_θ(x_t, t)‖²,       t ~ U[eps, T],  x_t = α_t x_0 + σ_t ε,

    γ = log(σ²/α²) (VDM's convention, increasing), sums over all dimensions (Kingma et al. 2021, eq. 17 with
    the prior and reconstruction terms). The decoder is :func:`~sde_diffusion.elbo.continuous_elbo`'s Gaussian
    one (mean x̂_0 at eps, variance σ_eps²/α_eps² = e^{γ(eps)}), so E[L] is that function's −ELBO; here t is
    uniform (``t_sampling`` "stratified": VDM's low-discrepancy draw) where continuous_elbo draws λ uniform, so
    the estimator's variance depends on the schedule between its end points and its mean does not (VDM eq. 13,
    for a network that sees only the SNR: time_input "log_snr"; its input is then differentiable in γ).

    ``variance_trick`` (LearnedVPSDE only; VDM's variance minimisation): the values and their gradients to the
    network and the end points γ_min, γ_max are unchanged, but the gradient reaching the schedule's interior
    (r(t_i), dr/dt(t_i), which only its interior parameters set) is multiplied by 2 L_i, so backpropagating any
    Σ_i w_i L_i gives the interior ∇ Σ_i w_i L_i². As E[L] does not depend on the interior, this descends the
    estimator's variance. (Nets must not mix samples, e.g. no batch norm.)

    Randomness in order: the t draw (as :func:`dsm_loss`'s), ε = randn(x0.shape), ε' = randn(x0.shape) for x_eps.
    An explicit ``t`` (in [eps, T]) or ``noise`` (ε) replaces its draw.
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sde_diffusion.ScoreModel, got {type(model).__name__}")
    if t_sampling not in T_SAMPLINGS:
        raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {t_sampling!r}")
    x0 = checked_samples(x0, "x0")
    sde, batch = model.sde, x0.shape[0]
    if variance_trick and not isinstance(sde, LearnedVPSDE):
        raise ValueError(f"variance_trick needs a model on a LearnedVPSDE (a fixed schedule has no interior to train), got {sde!r}")
    if t is None:
        t64 = sde.eps + (sde.T - sde.eps) * _unit_draws(batch, t_sampling, generator)
    else:
        t64 = sde._time(t, "t")
        check_batch(t64, x0, "t", "x0")
        t64 = t64.expand(batch) if t64.dim() == 0 else t64
        if (t64 < sde.eps).any():
            raise ValueError(f"t must lie in [eps={sde.eps:g}, T={sde.T:g}], the range the ELBO integrates over")
    if noise is None:
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
    elif not isinstance(noise, Tensor) or noise.shape != x0.shape:
        raise ValueError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}, got "
                         + (f"shape {tuple(noise.shape)}" if isinstance(noise, Tensor) else type(noise).__name__))
    recon_noise = randn(x0.shape, generator, x0.device, x0.dtype)
    snr_input = model.time_input == "log_snr"

    alpha, sigma, gamma, dgamma, interior = _vdm_schedule(sde, t64)
    a, s = per_sample(alpha, x0), per_sample(sigma, x0)
    x_t = a * x0 + s * noise
    pred = model._predict(x_t, t64, model_kwargs, a, s, net_time=log_snr_input(gamma).to(x0.dtype) if snr_input else None)
    diffusion = 0.5 * (sde.T - sde.eps) * dgamma * (pred.eps - noise).pow(2).reshape(batch, -1).sum(1)

    a_eps, s_eps, gamma_eps = _vdm_end(sde, "eps")
    t_eps = torch.full((batch,), sde.eps, dtype=F64)
    x_eps = a_eps.to(x0.dtype) * x0 + s_eps.to(x0.dtype) * recon_noise
    net_time_eps = log_snr_input(gamma_eps).to(x0.dtype).expand(batch) if snr_input else None
    x0_hat = model._predict(x_eps, t_eps, model_kwargs, a_eps.to(x0.dtype), s_eps.to(x0.dtype), net_time=net_time_eps).x0
    var = gamma_eps.exp()
    recon = 0.5 * ((x0 - x0_hat).pow(2).reshape(batch, -1).sum(1) / var + x0[0].numel() * torch.log(2 * math.pi * var))

    a_T, s_T, _ = _vdm_end(sde, "T")
    p2 = float(sde.prior_std) ** 2
    prior = 0.5 * (x0[0].numel() * (torch.log(p2 / s_T**2) + s_T**2 / p2 - 1)
                   + a_T**2 / p2 * x0.pow(2).reshape(batch, -1).sum(1))
    total = prior + recon + diffusion
    if variance_trick and interior[0].requires_grad:
        scale = 2 * total.detach().to(F64)
        for tensor in interior:
            tensor.register_hook(lambda grad: grad * scale)
    return total
