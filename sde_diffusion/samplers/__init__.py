"""Interchangeable reverse-time samplers: the same ``sample(model, shape=..., generator=...)`` call for all.

``get(name, **kwargs)`` builds one by name; ``available()`` lists the names.
"""
from __future__ import annotations

from typing import Dict, List, Type

from . import grids
from .adaptive_ode import AdaptiveDPMSolver
from .adaptive_sde import AdaptiveSDE
from .adaptive_unipc import AdaptiveUniPC
from .base import FixedStepSampler, Interval, NonFiniteError, Sampler, Samples, SamplingContext
from .ddim import DDIM
from .dpm_solver import DPMSolver
from .ddpm import DDPM
from .euler_maruyama import EulerMaruyama
from .heun import Heun
from .predictor_corrector import PredictorCorrector
from .probability_flow import ProbabilityFlowODE
from .reverse_diffusion import ReverseDiffusion
from .torchsde_adapter import TorchSDE
from .unipc import UniPC

REGISTRY: Dict[str, Type[Sampler]] = {}


def register(cls: Type[Sampler]) -> Type[Sampler]:
    """Add a sampler class to the registry under ``cls.name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute `name` to be registered")
    REGISTRY[cls.name] = cls
    return cls


for _cls in (EulerMaruyama, ReverseDiffusion, PredictorCorrector, ProbabilityFlowODE, TorchSDE, DDPM, DDIM, DPMSolver, UniPC, Heun, AdaptiveDPMSolver, AdaptiveSDE, AdaptiveUniPC):
    register(_cls)


def available() -> List[str]:
    """Names accepted by :func:`get`."""
    return sorted(REGISTRY)


def get(name: str, **kwargs) -> Sampler:
    """A sampler by registry name, e.g. ``get("euler_maruyama", steps=500)``."""
    if name not in REGISTRY:
        raise ValueError(f"name must be one of {available()}, got {name!r}")
    return REGISTRY[name](**kwargs)


__all__ = [
    "Sampler", "FixedStepSampler", "Samples", "SamplingContext", "Interval", "NonFiniteError", "grids",
    "EulerMaruyama", "ReverseDiffusion", "PredictorCorrector", "ProbabilityFlowODE", "TorchSDE", "DDPM", "DDIM", "DPMSolver", "UniPC", "Heun", "AdaptiveDPMSolver", "AdaptiveSDE", "AdaptiveUniPC",
    "register", "available", "get",
]
