"""Clipping of the denoised estimate x̂_0 (off by default).

* static: x̂_0 ← clip(x̂_0, −max_value, max_value) (DDPM's ``clip_sample``);
* dynamic (Saharia et al. 2022, Imagen): per sample, s = max(quantile_p |x̂_0|, max_value);
  x̂_0 ← clip(x̂_0, −s, s) · max_value / s.

The sampler then uses ε and the score implied by the clipped x̂_0: ε = (x − α x̂_0)/σ.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StaticThreshold:
    max_value: float = 1.0

    def __post_init__(self):
        if not self.max_value > 0:
            raise ValueError(f"max_value must be positive, got {self.max_value}")

    def __call__(self, x0: Tensor) -> Tensor:
        return x0.clamp(-self.max_value, self.max_value)


@dataclass(frozen=True)
class DynamicThreshold:
    percentile: float = 0.995
    max_value: float = 1.0

    def __post_init__(self):
        if not 0 < self.percentile <= 1:
            raise ValueError(f"percentile must lie in (0, 1], got {self.percentile}")
        if not self.max_value > 0:
            raise ValueError(f"max_value must be positive, got {self.max_value}")

    def __call__(self, x0: Tensor) -> Tensor:
        flat = x0.reshape(x0.shape[0], -1).abs()
        if flat.dtype not in (torch.float32, torch.float64):  # torch.quantile: float32/float64 only (bf16, fp16 upcast)
            flat = flat.float()
        s = torch.quantile(flat, self.percentile, dim=1).clamp_min(self.max_value).to(x0.dtype)
        s = s.reshape(-1, *([1] * (x0.dim() - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) * (self.max_value / s)
