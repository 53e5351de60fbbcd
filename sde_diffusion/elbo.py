"""Variational bounds on the log-likelihood: DDPM's discrete ELBO and the continuous-time ELBO.

Discrete (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", eq. 5; Sohl-Dickstein et al. 2015),
DDPM steps t = 1…N (step t sits at time t/N of a :class:`~sde_diffusion.sde.DiscreteVPSDE`, ᾱ_0 = 1):

    −ELBO(x_0) = L_T + Σ_{t=2}^{N} L_{t−1} + L_0,
    L_T     = KL(q(x_N | x_0) ‖ N(0, I)),                      q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I),
    L_{t−1} = E_{x_t ~ q(x_t|x_0)} KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)),
    L_0     = E_{x_1 ~ q(x_1|x_0)} [−log p_θ(x_0 | x_1)].

The posterior is q(x_{t−1} | x_t, x_0) = N(μ̃_t(x_t, x_0), β̃_t I) with (Ho et al., eq. 6–7)

    μ̃_t = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x_0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t,    β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t,

and the model step is p_θ(x_{t−1} | x_t) = N(μ̃_t(x_t, x̂_0(x_t, t)), β̃_t I): DDPM's ``fixed_small`` variance
σ_t² = β̃_t with the network's x̂_0 in place of x_0 (the same mean as (x_t − β_t/√(1 − ᾱ_t) ε_θ)/√α_t).
Given x_t each L_{t−1} is an exact Gaussian KL; x_t is drawn once per step. With equal variances it is
½ (SNR_{t−1} − SNR_t) ‖x_0 − x̂_0‖² (Kingma et al. 2021, "Variational Diffusion Models", eq. 13).

The decoder p_θ(x_0 | x_1) has mean x̂_0(x_1, step 1) and variance v_1 = (1 − ᾱ_1)/ᾱ_1 = β_1/(1 − β_1), the
variance of x_0 given x_1 under a flat prior (≈ DDPM's fixed_large σ_1² = β_1; β̃_1 = 0 cannot be used):
"gaussian" is the density N(x_0; x̂_0, v_1 I) for continuous data; "discretized" is Ho et al.'s discretized
Gaussian for 8-bit images scaled to [−1, 1]: the mass of N(x̂_0, v_1) on the bin [x_0 − 1/255, x_0 + 1/255],
the end bins extended to ±∞.

Continuous (Song, Durkan, Murray & Ermon 2021, "Maximum Likelihood Training of Score-Based Diffusion
Models", Thm. 1 in its denoising form; Kingma et al. 2021, eq. 17), for any linear SDE on [eps, T]:

    −ELBO(x_0) = KL(q(x_T | x_0) ‖ N(0, prior_std² I)) + E[−log N(x_0; x̂_0(x_eps, eps), σ_eps²/α_eps² I)]
                 + ½ ∫_eps^T g(t)² E ‖s_θ(x_t, t) − ∇ log p_{0t}(x_t | x_0)‖² dt,     ∇ log p_{0t} = −ε/σ(t),

the limit of the discrete sum as the log-SNR steps shrink (g²/σ² = −2 dλ/dt). It is estimated with λ = λ(t)
uniform on [λ(T), λ(eps)] (importance sampling, Song et al. 2021 §4) and one ε per draw; the standard error is
the sample std of the draws over √(draws).

The discrete sum does not converge to it on DDPM schedules: non-decreasing β_t make σ_t² grow about
linearly in t at the low-noise end, so the log-SNR steps there are log((k+1)/k) for every N and the
right-endpoint sum exceeds the integral there by Σ_k ½[1/k − log(1 + 1/k)] → (γ/2) D nats (γ ≈ 0.577) as
N → ∞ (1-D Gaussian data, exact score, VP β ∈ [0.1, 20]: gaps 0.58, 0.62, 0.43, 0.34 nats at N = 50, 200,
1000, 4000). On any window away from t = 0 the log-SNR steps shrink as 1/N and the two agree to O(1/N).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from ._checks import checked_samples, positive_int
from .likelihood import bits_per_dim_of_logp
from .model import ScoreModel
from .sde import LinearSDE, randn

DECODERS = ("gaussian", "discretized")
F64 = torch.float64
#: half the width of one 8-bit bin on [−1, 1]
HALF_BIN = 1.0 / 255.0


@dataclass(frozen=True)
class ELBOTerms:
    """Result of :func:`discrete_elbo`, float64, in nats.

    ``terms`` (B, N+1): column 0 is L_0, column j = 1…N−1 is L_j (the KL at DDPM step t = j + 1), column N is
    L_T. ``total`` (B,) = terms.sum(1) is the negative ELBO, an upper bound on −log p_θ(x_0).
    """

    terms: Tensor
    decoder: str
    dim: int

    @property
    def total(self) -> Tensor:
        return self.terms.sum(1)

    @property
    def reconstruction(self) -> Tensor:
        """L_0, shape (B,)."""
        return self.terms[:, 0]

    @property
    def diffusion(self) -> Tensor:
        """Σ_{t=2}^{N} L_{t−1}, shape (B,)."""
        return self.terms[:, 1:-1].sum(1)

    @property
    def prior(self) -> Tensor:
        """L_T, shape (B,)."""
        return self.terms[:, -1]

    @property
    def bits_per_dim(self) -> Tensor:
        """Upper bound on bits/dim, (B,).

        "discretized": −ELBO/(D ln 2), a bound on −log₂ P(x_0) of the 8-bit image. "gaussian": the density
        bound read as 8-bit data in [−1, 1] dequantised, −(log p + D ln 2)/(D ln 2) + 8 (as :func:`bits_per_dim`).
        """
        if self.decoder == "discretized":
            return self.total / (self.dim * math.log(2.0))
        return bits_per_dim_of_logp(-self.total, self.dim)


@dataclass(frozen=True)
class ContinuousELBO:
    """Result of :func:`continuous_elbo`, float64, in nats, per sample (B,).

    ``total`` estimates −ELBO; ``stderr`` is its standard error and ``variance`` the variance of one draw.
    ``prior`` is exact; ``reconstruction`` and ``diffusion`` are the Monte-Carlo means of their terms.
    """

    total: Tensor
    stderr: Tensor
    variance: Tensor
    prior: Tensor
    reconstruction: Tensor
    diffusion: Tensor
    draws: int


# ----- closed forms -----
def gaussian_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, var1) ‖ N(mean2, var2)) = ½ [log(var2/var1) + (var1 + (mean1 − mean2)²)/var2 − 1]."""
    return 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Elementwise log of N(mean, std²)'s mass on x's 8-bit bin [x − 1/255, x + 1/255] (end bins to ±∞).

    Ho et al. 2020, §3.3 eq. 13; x must lie in [−1, 1] on the 256-level grid.
    """
    upper = (x - mean + HALF_BIN) / std
    lower = (x - mean - HALF_BIN) / std
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    # log(Φ(b) − Φ(a)) = log Φ(b) + log1p(−Φ(a)/Φ(b)), and by symmetry through the survival function
    log_mid_low = log_cdf_upper + torch.log1p(-torch.exp(torch.special.log_ndtr(lower) - log_cdf_upper).clamp(max=1 - 1e-16))
    log_mid_high = log_sf_lower + torch.log1p(-torch.exp(torch.special.log_ndtr(-upper) - log_sf_lower).clamp(max=1 - 1e-16))
    log_mid = torch.where(x - mean < 0, log_mid_low, log_mid_high)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_mid))


def _alpha_bar(sde, step: int) -> float:
    """ᾱ_t for DDPM step t = 0…N (ᾱ_0 = 1)."""
    return 1.0 if step == 0 else float(sde.alphas_cumprod[step - 1])


def posterior_mean_var(sde, x0: Tensor, xt: Tensor, step: int) -> Tuple[Tensor, float]:
    """μ̃_t(x_t, x_0) and β̃_t of q(x_{t−1} | x_t, x_0) at DDPM step t (Ho et al. 2020, eq. 6–7)."""
    a_prev, a_t = _alpha_bar(sde, step - 1), _alpha_bar(sde, step)
    beta = float(sde.betas[step - 1])
    coef_x0 = math.sqrt(a_prev) * beta / (1.0 - a_t)
    coef_xt = math.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)
    return coef_x0 * x0 + coef_xt * xt, (1.0 - a_prev) / (1.0 - a_t) * beta


def model_mean_var(model: ScoreModel, xt: Tensor, step: int,
                   model_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[Tensor, float]:
    """p_θ(x_{t−1} | x_t) = N(μ̃_t(x_t, x̂_0(x_t)), β̃_t I) at DDPM step t ≥ 2 (fixed_small variance)."""
    x0_hat = _x0_hat(model, xt, step, model_kwargs)
    return posterior_mean_var(model.sde, x0_hat, xt, step)


def transition_kl(model: ScoreModel, x0: Tensor, xt: Tensor, step: int,
                  model_kwargs: Optional[Dict[str, Any]] = None) -> Tensor:
    """KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) per sample (B,) in nats, DDPM step t = 2…N."""
    sde = _checked_discrete(model)
    if isinstance(step, bool) or int(step) != step or not 2 <= step <= sde.num_steps:
        raise ValueError(f"step must be an integer in 2…N={sde.num_steps}, got {step}")
    mean_q, var = posterior_mean_var(sde, x0.to(F64), xt.to(F64), int(step))
    mean_p, _ = model_mean_var(model, xt, int(step), model_kwargs)
    var_t = torch.tensor(var, dtype=F64)
    return _sum(gaussian_kl(mean_q, var_t, mean_p.to(F64), var_t))


def prior_kl(sde, x0: Tensor) -> Tensor:
    """L_T = KL(N(α(T) x_0, σ(T)² I) ‖ N(0, prior_std² I)) per sample (B,)."""
    t = torch.tensor(float(sde.T), dtype=F64)
    alpha, sigma = float(sde._log_alpha(t).exp()), float(sde._log_sigma(t).exp())
    var_q = torch.tensor(sigma**2, dtype=F64)
    var_p = torch.tensor(float(sde.prior_std) ** 2, dtype=F64)
    return _sum(gaussian_kl(alpha * x0.to(F64), var_q, torch.zeros((), dtype=F64), var_p))


# ----- the bounds -----
def discrete_elbo(model: ScoreModel, x0: Tensor, *, decoder: str = "gaussian",
                  generator: Optional[torch.Generator] = None,
                  model_kwargs: Optional[Dict[str, Any]] = None) -> ELBOTerms:
    """DDPM's negative ELBO L_T + Σ_{t=2}^{N} L_{t−1} + L_0 of ``x0`` (module docstring), one x_t per step.

    ``model`` must live on a :class:`DiscreteVPSDE`. Noise is drawn as ``randn(x0.shape, generator)`` for
    steps t = 1, 2, …, N in that order (x_1 for L_0 first). ``decoder`` ∈ {"gaussian", "discretized"};
    "discretized" needs x0 in [−1, 1]. Costs N model evaluations on batches of B.
    """
    sde = _checked_discrete(model)
    x0 = checked_samples(x0, "x0")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "discretized" and (x0.min() < -1 or x0.max() > 1):
        raise ValueError(f"decoder='discretized' needs x0 scaled to [-1, 1], got values in "
                         f"[{float(x0.min()):.4g}, {float(x0.max()):.4g}]")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict or None, got {type(model_kwargs).__name__}")
    n, batch = sde.num_steps, x0.shape[0]
    x64 = x0.to(F64)
    terms = torch.zeros(batch, n + 1, dtype=F64)
    with torch.no_grad():
        for step in range(1, n + 1):
            a_t = _alpha_bar(sde, step)
            noise = randn(x0.shape, generator, x0.device, x0.dtype).to(F64)
            xt = (math.sqrt(a_t) * x64 + math.sqrt(1.0 - a_t) * noise).to(x0.dtype)
            if step == 1:
                terms[:, 0] = _reconstruction_nll(model, x64, xt, decoder, (1.0 - a_t) / a_t, model_kwargs)
            else:
                terms[:, step - 1] = transition_kl(model, x64, xt, step, model_kwargs).cpu()
        terms[:, n] = prior_kl(sde, x64).cpu()
    return ELBOTerms(terms=terms, decoder=decoder, dim=x0[0].numel())


def continuous_elbo(model: ScoreModel, x0: Tensor, *, t_samples: int = 64,
                    generator: Optional[torch.Generator] = None,
                    model_kwargs: Optional[Dict[str, Any]] = None) -> ContinuousELBO:
    """Monte-Carlo negative continuous-time ELBO of ``x0`` (module docstring) with its standard error.

    Each of the ``t_samples`` draws (per sample) takes λ ~ U[λ(T), λ(eps)], t = t(λ), and ε for the
    importance-weighted diffusion term (λ(eps) − λ(T)) · ‖ε_θ(x_t, t) − ε‖² (summed over dimensions; unbiased
    for ½ ∫ g² E‖s_θ + ε/σ‖² dt as g²/σ² = −2 dλ/dt), and a fresh ε' for the Gaussian reconstruction term
    −log N(x_0; x̂_0(x_eps), σ_eps²/α_eps²); the prior KL is exact. Order of randomness per draw: rand(B) for λ,
    randn(x0.shape) for ε, randn(x0.shape) for ε'.
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sde_diffusion.ScoreModel, got {type(model).__name__}")
    x0 = checked_samples(x0, "x0")
    draws = positive_int(t_samples, "t_samples")
    if draws < 2:
        raise ValueError(f"t_samples must be at least 2 to give a standard error, got {t_samples}")
    sde: LinearSDE = model.sde
    eps, T, batch = float(sde.eps), float(sde.T), x0.shape[0]
    x64 = x0.to(F64)
    t_eps = torch.full((batch,), eps, dtype=F64)
    a_eps, s_eps = float(sde._log_alpha(t_eps[:1]).exp()), float(sde._log_sigma(t_eps[:1]).exp())
    recon_var = (s_eps / a_eps) ** 2
    lam_eps, lam_T = (float(v) for v in sde._log_snr(torch.tensor([eps, T], dtype=F64)))
    diffusion = torch.zeros(draws, batch, dtype=F64)
    recon = torch.zeros(draws, batch, dtype=F64)
    device = generator.device if generator is not None else "cpu"
    with torch.no_grad():
        for k in range(draws):
            lam = lam_T + (lam_eps - lam_T) * torch.rand(batch, generator=generator, device=device, dtype=F64).cpu()
            t = sde._t_of_log_snr(lam).clamp(eps, T)
            noise = randn(x0.shape, generator, x0.device, x0.dtype).to(F64)
            alpha, sigma = _per_row(sde._log_alpha(t).exp(), x64), _per_row(sde._log_sigma(t).exp(), x64)
            xt = (alpha * x64 + sigma * noise).to(x0.dtype)
            eps_hat = model._predict(xt, t, model_kwargs).eps.to(F64)
            diffusion[k] = (lam_eps - lam_T) * _sum((eps_hat - noise) ** 2).cpu()
            noise_eps = randn(x0.shape, generator, x0.device, x0.dtype).to(F64)
            x_eps = (a_eps * x64 + s_eps * noise_eps).to(x0.dtype)
            x0_hat = model._predict(x_eps, t_eps, model_kwargs).x0.to(F64)
            recon[k] = -_sum(_normal_log_prob(x64, x0_hat, recon_var)).cpu()
        prior = prior_kl(sde, x64).cpu()
    per_draw = prior + recon + diffusion
    variance = per_draw.var(0, unbiased=True)
    return ContinuousELBO(total=per_draw.mean(0), stderr=(variance / draws).sqrt(), variance=variance,
                          prior=prior, reconstruction=recon.mean(0), diffusion=diffusion.mean(0), draws=draws)


# ----- pieces -----
def _reconstruction_nll(model: ScoreModel, x0: Tensor, x1: Tensor, decoder: str, var: float,
                        model_kwargs: Optional[Dict[str, Any]]) -> Tensor:
    """L_0 = −log p_θ(x_0 | x_1) per sample, decoder mean x̂_0(x_1, step 1) and variance ``var``."""
    mean = _x0_hat(model, x1, 1, model_kwargs).to(F64)
    if decoder == "gaussian":
        return -_sum(_normal_log_prob(x0, mean, var)).cpu()
    return -_sum(discretized_gaussian_log_likelihood(x0, mean, torch.tensor(math.sqrt(var), dtype=F64))).cpu()


def _x0_hat(model: ScoreModel, xt: Tensor, step: int, model_kwargs: Optional[Dict[str, Any]]) -> Tensor:
    t = torch.full((xt.shape[0],), step / model.sde.num_steps, dtype=F64)
    return model._predict(xt, t, model_kwargs).x0


def _normal_log_prob(x: Tensor, mean: Tensor, var: float) -> Tensor:
    return -0.5 * ((x - mean) ** 2 / var + math.log(2 * math.pi * var))


def _sum(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def _per_row(coef: Tensor, x: Tensor) -> Tensor:
    return coef.to(device=x.device, dtype=F64).reshape(-1, *([1] * (x.dim() - 1)))


def _checked_discrete(model: ScoreModel):
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sde_diffusion.ScoreModel, got {type(model).__name__}")
    if getattr(model.sde, "num_steps", None) is None:
        raise ValueError(f"the discrete ELBO needs a model on a DiscreteVPSDE (sde.num_steps set), got {model.sde!r}")
    return model.sde
