"""Noise-level embeddings: a scalar conditioning value per sample → a feature vector.

* Sinusoidal (Vaswani et al. 2017; Ho et al. 2020, DDPM): with half = dim/2 and k = 0…half−1,
      ω_k = exp(−log(max_period)·k/half),   e(t) = [sin(scale·t·ω_k) …, cos(scale·t·ω_k) …].
* Gaussian random Fourier features (Tancik et al. 2020; Song et al. 2021, score_sde ``GaussianFourierProjection``):
      W_k ~ N(0, scale²) fixed,   e(t) = [sin(2π W_k t) …, cos(2π W_k t) …].

Either is followed by ``Linear → SiLU → Linear`` to the conditioning width (:class:`TimeEmbedding`), as in DDPM++.
The conditioning value may be continuous time, a DDPM step index or EDM's c_noise: the embedding only sees a number.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .._checks import positive, positive_int

TIME_EMBEDDINGS = ("sinusoidal", "fourier")
#: the seed of the fixed Fourier frequencies: two nets built from one config are identical before training
FOURIER_SEED = 0


def _even_dim(dim: int, name: str = "dim") -> int:
    dim = positive_int(dim, name)
    if dim % 2:
        raise ValueError(f"{name} must be even (half sine, half cosine features), got {dim}")
    return dim


def _as_batch(t: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a float tensor of shape (batch,), got {type(t).__name__}")
    if t.dim() > 1:
        raise ValueError(f"t must be a scalar or a tensor of shape (batch,), got shape {tuple(t.shape)}")
    return t.reshape(-1)


class SinusoidalEmbedding(nn.Module):
    """e(t) = [sin(scale·t·ω_k), cos(scale·t·ω_k)], ω_k = exp(−log(max_period)·k/(dim/2)) (DDPM / Transformer).

    ``scale`` = 1000 maps t ∈ [0, 1] onto DDPM's step range; use 1 for step indices.
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        self.dim = _even_dim(dim)
        self.scale = positive(scale, "scale")
        self.max_period = positive(max_period, "max_period")
        half = self.dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float64) / half)
        # derived from the arguments, so not part of the state_dict
        self.register_buffer("freqs", (self.scale * freqs).float(), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """(batch,) → (batch, dim) float32 features (float32 even in a bf16 net: scale·t reaches 1000)."""
        args = _as_batch(t).float()[:, None] * self.freqs.float()[None, :]
        return torch.cat([args.sin(), args.cos()], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}, max_period={self.max_period}"


class FourierEmbedding(nn.Module):
    """e(t) = [sin(2π W t), cos(2π W t)] with W ~ N(0, scale²) of size dim/2 fixed at construction (score_sde).

    W is a persistent buffer (saved and restored with the state_dict) drawn from a generator seeded with
    :data:`FOURIER_SEED`, so two nets built from the same config start identical.
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        self.dim = _even_dim(dim)
        self.scale = positive(scale, "scale")
        generator = torch.Generator().manual_seed(FOURIER_SEED)
        self.register_buffer("W", torch.randn(self.dim // 2, generator=generator) * self.scale)

    def forward(self, t: Tensor) -> Tensor:
        """(batch,) → (batch, dim) float32 features."""
        args = (2 * math.pi) * _as_batch(t).float()[:, None] * self.W.float()[None, :]
        return torch.cat([args.sin(), args.cos()], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"


def make_features(kind: str, dim: int, scale: Optional[float] = None) -> nn.Module:
    """The feature map named ``kind`` ("sinusoidal" | "fourier"); ``scale`` None keeps its default."""
    if kind not in TIME_EMBEDDINGS:
        raise ValueError(f"time_embedding must be one of {TIME_EMBEDDINGS}, got {kind!r}")
    cls = SinusoidalEmbedding if kind == "sinusoidal" else FourierEmbedding
    return cls(dim) if scale is None else cls(dim, scale=positive(scale, "embedding_scale"))


class TimeEmbedding(nn.Module):
    """features(t) → Linear → SiLU → Linear: the conditioning vector of width ``out_dim`` (DDPM++)."""

    def __init__(self, kind: str, feature_dim: int, out_dim: int, scale: Optional[float] = None):
        super().__init__()
        self.features = make_features(kind, feature_dim, scale)
        self.mlp = nn.Sequential(nn.Linear(feature_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        features = self.features(t)
        return self.mlp(features.to(self.mlp[0].weight.dtype))
