"""The conditioning vector of a score network: time embedding (+ class-label embedding).

    c(t, y) = MLP(features(t)) + E[y],   E ∈ R^{(num_classes + 1) × width},

where row ``num_classes`` of E is the *null* label used for classifier-free guidance (Ho & Salimans 2022);
``y=None`` means the null label for every sample.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .._checks import positive_int
from .embeddings import TimeEmbedding


def check_num_classes(num_classes: Optional[int]) -> Optional[int]:
    return None if num_classes is None else positive_int(num_classes, "num_classes")


def batch_time(t: Tensor, batch: int) -> Tensor:
    """``t`` as a (batch,) tensor: a scalar is broadcast; any other shape raises ValueError naming ``t``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a tensor of shape ({batch},), got {type(t).__name__}")
    if t.dim() == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},) (one noise level per sample), got shape {tuple(t.shape)}")
    return t


class Conditioning(nn.Module):
    """c(t, y) of width ``width`` from a ``time_embedding`` ("sinusoidal" | "fourier") of ``feature_dim`` features."""

    def __init__(self, time_embedding: str, feature_dim: int, width: int, embedding_scale: Optional[float] = None,
                 num_classes: Optional[int] = None):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.time = TimeEmbedding(time_embedding, feature_dim, width, embedding_scale)
        self.label = None if self.num_classes is None else nn.Embedding(self.num_classes + 1, width)

    def forward(self, t: Tensor, y: Optional[Tensor], batch: int) -> Tensor:
        emb = self.time(batch_time(t, batch))
        if self.label is None:
            if y is not None:
                raise ValueError("y was given but this net is unconditional (num_classes=None)")
            return emb
        return emb + self.label(self._labels(y, batch, emb.device))

    def _labels(self, y: Optional[Tensor], batch: int, device: torch.device) -> Tensor:
        if y is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise TypeError(f"y must be an integer tensor of labels of shape ({batch},), got "
                            f"{y.dtype if isinstance(y, Tensor) else type(y).__name__}")
        if y.shape != (batch,):
            raise ValueError(f"y must have shape ({batch},), got shape {tuple(y.shape)}")
        # a value check reads the data: skipped inside torch.compile, which would otherwise break the graph here
        if not torch.compiler.is_compiling() and bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(f"y must hold labels in [0, {self.num_classes}] ({self.num_classes} = null label), "
                             f"got values in [{int(y.min())}, {int(y.max())}]")
        return y.long()
