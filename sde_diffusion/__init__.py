"""sde_diffusion: score-based generative modelling with SDEs (Song et al. 2021).

A forward :class:`LinearSDE` defines x_t | x_0 ~ N(α(t) x_0, σ(t)² I); a :class:`ScoreModel` gives
s_θ = −ε_θ/σ; :func:`dsm_loss` trains it by denoising score matching (:mod:`sde_diffusion.training`
runs the loop); interchangeable samplers in :mod:`sde_diffusion.samplers` turn noise into data.
"""
from . import data, guidance, interop, inverse, losses, metrics, nets, plotting, samplers, training
from .elbo import continuous_elbo, discrete_elbo
from .likelihood import bits_per_dim, log_likelihood
from .losses import dsm_loss, vdm_loss
from .model import Prediction, ScoreModel
from .sde import CosineVPSDE, DiscreteVPSDE, LearnedVPSDE, LinearSDE, SubVPSDE, TabulatedSDE, VESDE, VPSDE

__version__ = "0.1.0"

__all__ = [
    "LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "DiscreteVPSDE", "TabulatedSDE", "LearnedVPSDE",
    "ScoreModel", "Prediction", "dsm_loss", "vdm_loss", "log_likelihood", "bits_per_dim", "discrete_elbo", "continuous_elbo", "losses", "guidance", "inverse", "interop", "nets", "training", "samplers", "data", "metrics", "plotting", "__version__",
]
