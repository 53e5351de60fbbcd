"""The UNet's building blocks (DDPM++, Song et al. 2021; Dhariwal & Nichol 2021 for the adaptive group norm).

Residual block, with c the SiLU-activated conditioning vector and (s, b) = A c:

    h = Conv₃ₓ₃(SiLU(GN(x))),   h = GN(h)·(1 + s) + b,   h = Conv₃ₓ₃(Dropout(SiLU(h)))   (last conv zero-initialised)
    out = (skip(x) + h)/√2  if skip_rescale else  skip(x) + h,   skip = 1×1 conv when channels change, else identity.

Self-attention block (Vaswani et al. 2017), over the H·W positions of GN(x):

    out = (x + P·softmax(Q Kᵀ/√d) V)/√2   (P zero-initialised; multi-head; no √2 without skip_rescale).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import positive_int

RESAMPLE = ("avgpool", "conv")


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with min(groups, channels) groups, which must divide ``channels``."""
    n = min(positive_int(groups, "groups"), channels)
    if channels % n:
        raise ValueError(f"groups={groups}: GroupNorm needs min(groups, channels) = {n} to divide the channel "
                         f"count {channels}; choose groups (or channels/channel_mult) so that it does")
    return nn.GroupNorm(n, channels, eps=1e-6)


def zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN → SiLU → Conv → adaptive GN (scale-shift by the conditioning) → SiLU → Dropout → Conv(=0), plus skip."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, dropout: float = 0.0,
                 skip_rescale: bool = True, groups: int = 32):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.modulation = nn.Linear(cond_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        self.out_scale = 1 / math.sqrt(2.0) if skip_rescale else 1.0

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.modulation(cond)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        h = self.conv2(self.dropout(F.silu(h)))
        return (self.skip(x) + h) * self.out_scale


def _same_format(y: Tensor, like: Tensor) -> Tensor:
    """``y`` in ``like``'s memory format: mixing formats makes every later conv and elementwise op slow (≈ 2–5× on CPU)."""
    channels_last = like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
    return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions, residual, zero-initialised output projection."""

    def __init__(self, channels: int, num_heads: int = 1, skip_rescale: bool = True, groups: int = 32):
        super().__init__()
        num_heads = positive_int(num_heads, "num_heads")
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the attention block's channel count {channels}")
        self.num_heads = num_heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))
        self.out_scale = 1 / math.sqrt(2.0) if skip_rescale else 1.0

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        # (B, C, H, W) → (B, H·W, C): a view, no copy, when x is channels_last
        h = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(h).reshape(B, H * W, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        out = self.proj(a).transpose(1, 2).reshape(B, C, H, W)  # channels_last strides
        return (x + _same_format(out, x)) * self.out_scale


class Downsample(nn.Module):
    """Halve H and W: 2×2 average pooling ("avgpool") or a stride-2 3×3 conv ("conv")."""

    def __init__(self, channels: int, resample: str = "avgpool"):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if resample == "conv" else None

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return F.avg_pool2d(x, 2) if self.conv is None else self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest neighbour, followed by a 3×3 conv when resample == "conv"."""

    def __init__(self, channels: int, resample: str = "avgpool"):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if resample == "conv" else None

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class ResAttn(nn.Module):
    """A residual block, then (optionally) self-attention: one stage of the UNet."""

    def __init__(self, res: ResBlock, attn: Optional[AttentionBlock] = None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.res(x, cond)
        return h if self.attn is None else self.attn(h)
