"""Models from and for the two libraries most users bring: diffusers and k-diffusion.

**diffusers** (von Platen et al.) trains a network ``unet(x, i).sample`` on DDPM's integer steps i = 0…N−1 with
ᾱ_i = Π_{j≤i}(1 − β_j) and a ``prediction_type`` ("epsilon", "v_prediction", "sample"). That is exactly a
:class:`~sde_diffusion.sde.DiscreteVPSDE` with ``time_input="index"``: our time t_i = (i + 1)/N has α(t_i)² = ᾱ_i,
so diffusers' timesteps k are our grid t = (k + 1)/N (:func:`diffusers_grid`). Its last step goes to
``final_alpha_cumprod`` = 1 (DDIM ``set_alpha_to_one``) or to σ = 0 (``final_sigmas_type="zero"``): both are our
final Tweedie denoise (``denoise=True``); ``final_sigmas_type="sigma_min"`` ends undenoised on t = 1/N.

**k-diffusion** (Crowson; Karras et al. 2022, "Elucidating the Design Space…", eq. 4) works on the VE state
x̃ = x/α at σ̃ = σ/α = e^{−λ} with a denoiser D(x̃, σ̃) ≈ E[x_0 | x̃]. Any linear SDE gives one:

    D(x̃, σ̃) = x̂_0(α(t) x̃, t),   t = t(λ = −log σ̃),

and conversely a denoiser D on an SDE with α, σ is the x̂_0 model x̂_0(x, t) = D(x/α(t), σ(t)/α(t)).
k-diffusion samplers start from x̃_T = x_T/α_T; their final step to σ̃ = 0 is our Tweedie denoise.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from ._checks import per_sample
from .model import ScoreModel
from .sde import DiscreteVPSDE, LinearSDE, VESDE

#: diffusers' ``prediction_type`` → ours
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: EDM's sampling range (Karras et al. 2022, Table 1), the default VE range of a bare k-diffusion denoiser
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0


# ============================================================================ diffusers


class DiffusersNet(nn.Module):
    """``unet(x, i, **kwargs)`` with its output unwrapped: ``.sample`` of a diffusers output, element 0 of a tuple."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        if not callable(unet):
            raise TypeError(f"unet must be callable unet(x, timestep, **kwargs), got {type(unet).__name__}")
        self.unet = unet

    def forward(self, x: Tensor, timestep: Tensor, **kwargs: Any) -> Tensor:
        out = self.unet(x, timestep, **kwargs)
        if isinstance(out, Tensor):
            return out
        if hasattr(out, "sample"):
            return out.sample
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            return out[0]
        raise TypeError(f"unet returned {type(out).__name__}; expected a tensor, an output with .sample, or a tuple")


def _scheduler_config(scheduler: Any) -> Mapping[str, Any]:
    config = getattr(scheduler, "config", scheduler)
    if not isinstance(config, Mapping):
        raise TypeError(f"scheduler must be a diffusers scheduler or its config (a mapping), got {type(scheduler).__name__}")
    return config


def diffusers_betas(scheduler: Any) -> Tensor:
    """β_0…β_{N−1} of a diffusers scheduler or config, rebuilt in float64 from its ``beta_schedule``.

    diffusers' own formulas: "linear" linspace(β_start, β_end, N); "scaled_linear" linspace(√β_start, √β_end, N)²;
    "squaredcos_cap_v2" Nichol & Dhariwal's cosine (2021, eq. 17; max β 0.999); ``trained_betas`` as given.
    """
    config = _scheduler_config(scheduler)
    n = config.get("num_train_timesteps")
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"scheduler num_train_timesteps must be an integer >= 2, got {n!r}")
    if config.get("rescale_betas_zero_snr", False):
        raise ValueError("rescale_betas_zero_snr=True gives ᾱ_{N-1} = 0 (zero terminal SNR), which a DiscreteVPSDE "
                         "cannot represent: use a scheduler with rescale_betas_zero_snr=False")
    trained = config.get("trained_betas")
    if trained is not None:
        betas = torch.as_tensor(trained, dtype=torch.float64).reshape(-1)
        if betas.numel() != n:
            raise ValueError(f"trained_betas has {betas.numel()} values but num_train_timesteps={n}")
        return betas
    schedule = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if schedule == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    if schedule == "squaredcos_cap_v2":
        return DiscreteVPSDE.cosine(n).betas
    raise ValueError(f"beta_schedule must be 'linear', 'scaled_linear' or 'squaredcos_cap_v2' (or trained_betas given), "
                     f"got {schedule!r}")


def from_diffusers(unet: nn.Module, scheduler: Any) -> ScoreModel:
    """A :class:`ScoreModel` for a diffusers network and the scheduler (or config) it was trained with.

    The SDE is ``DiscreteVPSDE(betas)`` (:func:`diffusers_betas`), the network gets DDPM step indices
    (``time_input="index"``) and ``prediction_type`` maps to "eps" / "v" / "x0". Sampling options of the
    scheduler (``clip_sample``, ``thresholding``, its timestep spacing) are not part of the model: pick them on
    our sampler (``thresholding=``, ``grid=diffusers_grid(scheduler)``).
    """
    config = _scheduler_config(scheduler)
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in DIFFUSERS_PREDICTIONS:
        raise ValueError(f"scheduler prediction_type must be one of {tuple(DIFFUSERS_PREDICTIONS)}, got {prediction_type!r}")
    sde = DiscreteVPSDE(diffusers_betas(config))
    return ScoreModel(DiffusersNet(unet), sde, prediction=DIFFUSERS_PREDICTIONS[prediction_type], time_input="index")


def diffusers_grid(scheduler: Any, final: Optional[str] = None) -> Tensor:
    """Our explicit time grid for a scheduler's ``timesteps`` (after ``set_timesteps``): t = (k + 1)/N, float64.

    ``final="sigma_min"`` appends t = 1/N (diffusers' last step to timestep 0, then sample with ``denoise=False``);
    the default (None) appends nothing: diffusers' last step to ᾱ = 1 or σ = 0 is our final denoise.
    Pass the scheduler that was stepped: ``DDIMPipeline`` works on its own copy (``DDIMScheduler.from_config``).
    """
    timesteps = getattr(scheduler, "timesteps", None)
    if not isinstance(timesteps, Tensor) or timesteps.dim() != 1 or timesteps.numel() < 1:
        raise ValueError("scheduler must have 1-d timesteps: call scheduler.set_timesteps(steps) first")
    if final not in (None, "sigma_min"):
        raise ValueError(f"final must be None or 'sigma_min', got {final!r}")
    n = _scheduler_config(scheduler)["num_train_timesteps"]
    grid = (timesteps.to(torch.float64).cpu() + 1) / n
    return torch.cat([grid, grid.new_tensor([1.0 / n])]) if final == "sigma_min" else grid


# ============================================================================ k-diffusion


class KDiffusionDenoiser(nn.Module):
    """A :class:`ScoreModel` as k-diffusion's denoiser: ``D(x̃, σ̃, **kw) = x̂_0(α(t) x̃, t)``, t = t(λ = −log σ̃).

    Every ``k_diffusion.sampling.sample_*`` runs on it from ``x̃_T = x_T / α_T`` (:meth:`scale_prior`) with
    ``get_sigmas(steps)``; ``sigma_min``/``sigma_max`` are σ̃(eps)/σ̃(T) (for ``get_sigmas_karras`` and
    ``sample_dpm_adaptive``) and ``sigmas`` the σ̃ of a DiscreteVPSDE's N training steps, ascending, as
    k-diffusion's ``DiscreteSchedule`` holds them.
    """

    def __init__(self, model: ScoreModel):
        super().__init__()
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be a ScoreModel, got {type(model).__name__}")
        self.model = model
        self.sde: LinearSDE = model.sde

    # ----- σ̃ ↔ t -----
    def t_to_sigma(self, t: Any) -> Tensor:
        """σ̃(t) = σ(t)/α(t) = e^{−λ(t)}, float64."""
        return torch.exp(-self.sde._log_snr(self.sde._time(t)))

    def sigma_to_t(self, sigma: Any) -> Tensor:
        """t(σ̃) = t(λ = −log σ̃), float64, clamped into [0, T]."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu()
        if (sigma <= 0).any() or not torch.isfinite(sigma).all():
            raise ValueError("sigma must be finite and > 0 (the step to σ̃ = 0 is the sampler's, not the denoiser's)")
        return self.sde._t_of_log_snr(-sigma.log()).clamp(0.0, self.sde.T)

    @property
    def sigma_min(self) -> float:
        return float(self.t_to_sigma(self.sde.eps))

    @property
    def sigma_max(self) -> float:
        return float(self.t_to_sigma(self.sde.T))

    @property
    def sigmas(self) -> Optional[Tensor]:
        """σ̃_i = √((1 − ᾱ_i)/ᾱ_i) of a DiscreteVPSDE's steps (ascending); None for a continuous SDE."""
        if not isinstance(self.sde, DiscreteVPSDE):
            return None
        abar = self.sde.alphas_cumprod
        return ((1 - abar) / abar).sqrt()

    def get_sigmas(self, steps: int, grid: Any = "karras") -> Tensor:
        """``steps + 1`` decreasing σ̃ at our ``make_grid(grid, sde, steps)`` times (T … eps), then 0 (the denoise)."""
        from .samplers.grids import make_grid

        sig = self.t_to_sigma(make_grid(grid, self.sde, steps))
        return torch.cat([sig, sig.new_zeros(1)])

    def scale_prior(self, x_T: Tensor) -> Tensor:
        """x̃_T = x_T/α(T): our prior draw in k-diffusion's state."""
        return x_T / float(self.sde._log_alpha(torch.tensor(float(self.sde.T), dtype=torch.float64)).exp())

    def forward(self, x: Tensor, sigma: Any, **model_kwargs: Any) -> Tensor:
        sigma = torch.as_tensor(sigma).reshape(-1)
        if sigma.numel() not in (1, x.shape[0]):
            raise ValueError(f"sigma must be a scalar or of shape ({x.shape[0]},), got {sigma.numel()} values")
        if sigma.numel() > 1 and bool((sigma == sigma[0]).all()):
            sigma = sigma[:1]  # k-diffusion passes σ̃ s_in: one time for the whole batch
        t64 = self.sigma_to_t(sigma)
        t64 = t64[0] if t64.numel() == 1 else t64
        alpha = per_sample(self.sde._log_alpha(t64).exp(), x)
        return self.model._predict(alpha * x, t64, model_kwargs).x0


def to_kdiffusion(model: ScoreModel) -> KDiffusionDenoiser:
    """k-diffusion's denoiser for ``model``: ``D(x̃, σ̃)`` (see :class:`KDiffusionDenoiser`)."""
    return KDiffusionDenoiser(model)


class KDiffusionNet(nn.Module):
    """The x̂_0 network of a k-diffusion denoiser on ``sde``: x̂_0(x, t) = D(x/α(t), σ(t)/α(t)).

    σ̃ is passed with shape (batch,) in x's dtype, as k-diffusion's samplers pass it.
    """

    def __init__(self, denoiser: nn.Module, sde: LinearSDE):
        super().__init__()
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable denoiser(x, sigma, **kwargs), got {type(denoiser).__name__}")
        self.denoiser, self.sde = denoiser, sde

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        t64 = torch.as_tensor(t, dtype=torch.float64).cpu()
        alpha = self.sde._log_alpha(t64).exp()
        sigma_tilde = torch.exp(-self.sde._log_snr(t64)).to(device=x.device, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        return self.denoiser(x / per_sample(alpha, x), sigma_tilde, **kwargs)


def from_kdiffusion(denoiser: nn.Module, sde: Optional[LinearSDE] = None) -> ScoreModel:
    """A :class:`ScoreModel` (prediction "x0") for a k-diffusion denoiser D(x̃, σ̃) ≈ E[x_0 | x_0 + σ̃ n].

    ``sde=None`` takes the VE process k-diffusion's denoisers live in: ``VESDE(sigma_min, sigma_max)`` (α = 1,
    σ(t) = σ_min (σ_max/σ_min)^t, so t is linear in log σ̃) on the denoiser's own ``sigma_min``/``sigma_max``
    where it has them (k-diffusion's ``DiscreteSchedule`` wrappers, :class:`KDiffusionDenoiser`), else EDM's
    [0.002, 80]. Any other :class:`LinearSDE` works too: the model is x̂_0(x, t) = D(x/α(t), σ(t)/α(t)).
    """
    if sde is None:
        sigma_min = float(getattr(denoiser, "sigma_min", EDM_SIGMA_MIN))
        sigma_max = float(getattr(denoiser, "sigma_max", EDM_SIGMA_MAX))
        if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
            raise ValueError(f"denoiser's sigma range must satisfy 0 < sigma_min < sigma_max, got [{sigma_min}, {sigma_max}]")
        sde = VESDE(sigma_min=sigma_min, sigma_max=sigma_max, eps=1e-5)
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a sde_diffusion.LinearSDE or None, got {type(sde).__name__}")
    return ScoreModel(KDiffusionNet(denoiser, sde), sde, prediction="x0")


__all__ = [
    "from_diffusers", "diffusers_betas", "diffusers_grid", "DiffusersNet", "DIFFUSERS_PREDICTIONS",
    "to_kdiffusion", "from_kdiffusion", "KDiffusionDenoiser", "KDiffusionNet",
]
