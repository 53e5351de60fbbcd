"""Predictor–corrector sampling (Song et al. 2021, Algorithm 1 and 4).

At each grid time t the corrector runs ``corrector_steps`` Langevin MCMC steps on p_t, then the
predictor moves the state to the next time. Langevin step with a signal-to-noise ratio ``snr``:

    ε = 2 α (snr ‖z‖ / ‖s_θ(x, t)‖)²,   x ← x + ε s_θ(x, t) + √(2ε) z,

with α = α_{t|s}² (1 − β_i for DDPM-type VP schedules, 1 for VE), norms averaged over the batch.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import Tensor

from .base import FixedStepSampler, Interval, SamplingContext
from .ddpm import ancestral_step
from .euler_maruyama import euler_maruyama_step
from .grids import GridLike
from .reverse_diffusion import reverse_diffusion_step

StepRule = Callable[[SamplingContext, Tensor, Interval], Tensor]

PREDICTORS: Dict[str, StepRule] = {
    "euler_maruyama": euler_maruyama_step,
    "reverse_diffusion": reverse_diffusion_step,
    "ancestral": ancestral_step,
}
CORRECTORS = ("langevin", "none")


def _batch_norm(v: Tensor) -> Tensor:
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=-1).mean()


def langevin_step(ctx: SamplingContext, x: Tensor, iv: Interval, snr: float) -> Tensor:
    score = ctx.score(x, iv.t)
    z = ctx.noise(x)
    step_size = 2 * iv.alpha_ts**2 * (snr * _batch_norm(z) / _batch_norm(score)) ** 2
    return x + step_size * score + torch.sqrt(2 * step_size) * z


class PredictorCorrector(FixedStepSampler):
    """Any predictor with an optional Langevin corrector; NFE = steps × (1 + corrector_steps) (+1 denoise)."""

    name = "predictor_corrector"

    def __init__(
        self,
        predictor: str = "reverse_diffusion",
        corrector: str = "langevin",
        snr: float = 0.16,
        corrector_steps: int = 1,
        steps: int = 1000,
        grid: GridLike = "uniform",
        denoise: bool = True,
        thresholding=None,
    ):
        super().__init__(steps=steps, grid=grid, denoise=denoise, thresholding=thresholding)
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {sorted(PREDICTORS)}, got {predictor!r}")
        if corrector not in CORRECTORS:
            raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")
        if not float(snr) > 0:
            raise ValueError(f"snr must be positive, got {snr}")
        if int(corrector_steps) != corrector_steps or corrector_steps < 0:
            raise ValueError(f"corrector_steps must be a non-negative integer, got {corrector_steps}")
        self.predictor = predictor
        self.corrector = corrector
        self.snr = float(snr)
        self.corrector_steps = int(corrector_steps) if corrector != "none" else 0
        self._predict = PREDICTORS[predictor]

    def step(self, ctx: SamplingContext, x: Tensor, interval: Interval) -> Tensor:
        for _ in range(self.corrector_steps):
            x = langevin_step(ctx, x, interval, self.snr)
        return self._predict(ctx, x, interval)
