"""Sub-VP SDE (Song et al. 2021, eq. 29): the VP drift with a smaller diffusion,

    dx = −½ β(t) x dt + √(β(t) (1 − exp(−2 ∫₀ᵗ β))) dW,   α as VP,   σ(t) = 1 − α(t)².
"""
from __future__ import annotations

import torch
from torch import Tensor

from .vp import VPSDE


class SubVPSDE(VPSDE):
    """Sub-VP SDE: its variance stays below the VP one at every t."""

    def _log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(-torch.expm1(2 * self._log_alpha(t)))

    def _g2(self, t: Tensor) -> Tensor:
        # exp(−2∫β) = α⁴
        return self.beta(t) * (-torch.expm1(4 * self._log_alpha(t)))

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        return super(VPSDE, self)._t_of_log_snr(lam)

    def discretize(self, n: int):
        raise NotImplementedError("SubVPSDE has no DDPM discretisation; use VPSDE.discretize")
