"""A residual MLP score network for vector data (B, D).

    h₀ = W_in x,   c = SiLU(MLP(e(t)) + E[y])   (width max(32, hidden/4); e(t): max(64, hidden/2) features),
    h_{k+1} = h_k + W_k Dropout(SiLU(LN(h_k)·(1 + a_k(c)) + b_k(c))),      (a_k, b_k) = A_k c   (scale-shift)
    out = W_out SiLU(LN(h_depth)),   W_out = 0 at initialisation,

so a fresh net outputs exactly 0. The scale-shift (FiLM / adaptive norm) conditioning is DDPM++'s and
Dhariwal & Nichol 2021's; the time features e(t) are Fourier (score_sde) by default.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import positive_int
from ._config import check_dropout, constructor_config
from .conditioning import Conditioning


class MLPBlock(nn.Module):
    """h + W Dropout(SiLU(LN(h)·(1 + scale) + shift)), (scale, shift) a linear map of the activated conditioning."""

    def __init__(self, width: int, cond_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.modulation = nn.Linear(cond_dim, 2 * width)
        self.linear = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.modulation(cond).chunk(2, dim=1)
        return h + self.linear(self.dropout(F.silu(self.norm(h) * (1 + scale) + shift)))


class MLP(nn.Module):
    """Residual MLP ``net(x, t, y=None)`` for x of shape (B, dim); output shape = x's shape."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, time_embedding: str = "fourier",
                 embedding_scale: Optional[float] = None, num_classes: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.hidden = positive_int(hidden, "hidden")
        self.depth = positive_int(depth, "depth")
        self.dropout = check_dropout(dropout)
        self.time_embedding = time_embedding
        self.embedding_scale = None if embedding_scale is None else float(embedding_scale)
        # a narrow conditioning vector: at hidden = 256 a full-width one would cost 2/3 of the net's multiply-adds
        feature_dim, cond_dim = max(64, 2 * (self.hidden // 4)), max(32, self.hidden // 4)
        self.cond = Conditioning(time_embedding, feature_dim, cond_dim, embedding_scale, num_classes)
        self.num_classes = self.cond.num_classes
        self.input = nn.Linear(self.dim, self.hidden)
        self.blocks = nn.ModuleList(MLPBlock(self.hidden, cond_dim, self.dropout) for _ in range(self.depth))
        self.out_norm = nn.LayerNorm(self.hidden)
        self.output = nn.Linear(self.hidden, self.dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    @property
    def config(self) -> Dict[str, Any]:
        return constructor_config("MLP", dim=self.dim, hidden=self.hidden, depth=self.depth,
                                  time_embedding=self.time_embedding, embedding_scale=self.embedding_scale,
                                  num_classes=self.num_classes, dropout=self.dropout)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}), got shape {tuple(x.shape)}")
        cond = F.silu(self.cond(t, y, x.shape[0]))
        h = self.input(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.output(F.silu(self.out_norm(h)))
