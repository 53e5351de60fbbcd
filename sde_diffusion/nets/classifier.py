"""Noise-conditional classifiers ``net(x, t) -> logits`` (B, K) for classifier guidance.

:class:`UNetClassifier` (images) is Dhariwal & Nichol's ``EncoderUNetModel`` (2021, "Diffusion Models Beat
GANs on Image Synthesis", guided-diffusion ``unet.py``): the downsampling half of the UNet with the same
residual blocks, attention and time conditioning, then global pooling and a linear head,

    Conv₃ₓ₃ → for l < L: num_res_blocks × [ResBlock → (Attn)] → Downsample (not after the last level)
            → middle: ResBlock → Attn → ResBlock → GN → SiLU → mean over H, W → Linear (zero-initialised) → K logits.

:class:`MLPClassifier` (vectors (B, D)) is the score MLP's residual trunk with its time conditioning and a
K-way head. Both heads start at zero, so an untrained classifier gives uniform p(y | x_t) and zero guidance.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import positive_int
from ._config import check_arguments, check_dropout, constructor_config
from .conditioning import Conditioning
from .layers import RESAMPLE, AttentionBlock, Downsample, ResAttn, ResBlock, group_norm, zero_
from .mlp import MLPBlock
from .unet import _int_tuple, level_resolutions

#: named :class:`UNetClassifier` configurations ("tiny": 8×8 digits, "small": 28×28 MNIST), CPU-sized
CLASSIFIER_CONFIGS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
                 time_embedding="sinusoidal", resample="avgpool", groups=8, image_size=8),
    "small": dict(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,), dropout=0.1,
                  time_embedding="sinusoidal", resample="avgpool", groups=8, image_size=28),
}


class UNetClassifier(nn.Module):
    """The UNet's encoder half + global average pooling + linear head: ``net(x, t)`` → logits (B, num_classes)."""

    def __init__(self, num_classes: int, in_channels: int = 1, channels: int = 32, channel_mult: Sequence[int] = (1, 2),
                 num_res_blocks: int = 1, attn_resolutions: Sequence[int] = (4,), dropout: float = 0.1,
                 time_embedding: str = "sinusoidal", embedding_scale: Optional[float] = None,
                 resample: str = "avgpool", groups: int = 8, num_heads: int = 1, image_size: int = 8):
        super().__init__()
        self.num_classes = positive_int(num_classes, "num_classes")
        self.in_channels = positive_int(in_channels, "in_channels")
        self.channels = positive_int(channels, "channels")
        self.channel_mult = _int_tuple(channel_mult, "channel_mult")
        self.num_res_blocks = positive_int(num_res_blocks, "num_res_blocks")
        self.attn_resolutions = _int_tuple(attn_resolutions, "attn_resolutions", allow_empty=True)
        self.dropout = check_dropout(dropout)
        if resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {RESAMPLE}, got {resample!r}")
        self.resample = resample
        self.groups = positive_int(groups, "groups")
        self.num_heads = positive_int(num_heads, "num_heads")
        self.image_size = positive_int(image_size, "image_size")
        self.time_embedding = time_embedding
        self.embedding_scale = None if embedding_scale is None else float(embedding_scale)
        self.divisor = 2 ** (len(self.channel_mult) - 1)
        resolutions = level_resolutions(self.image_size, self.channel_mult, self.attn_resolutions)

        cond_dim = 4 * self.channels
        self.cond = Conditioning(time_embedding, 2 * ((self.channels + 1) // 2), cond_dim, embedding_scale)
        res = lambda cin, cout: ResBlock(cin, cout, cond_dim, self.dropout, True, self.groups)  # noqa: E731
        attn = lambda ch: AttentionBlock(ch, self.num_heads, True, self.groups)  # noqa: E731
        self.input = nn.Conv2d(self.in_channels, self.channels, 3, padding=1)
        self.down = nn.ModuleList()
        ch = self.channels
        for level, mult in enumerate(self.channel_mult):
            use_attn = resolutions[level] in self.attn_resolutions
            for _ in range(self.num_res_blocks):
                self.down.append(ResAttn(res(ch, self.channels * mult), attn(self.channels * mult) if use_attn else None))
                ch = self.channels * mult
            if level != len(self.channel_mult) - 1:
                self.down.append(Downsample(ch, resample))
        self.mid = nn.ModuleList([ResAttn(res(ch, ch), attn(ch)), ResAttn(res(ch, ch))])
        self.out_norm = group_norm(ch, self.groups)
        self.head = zero_(nn.Linear(ch, self.num_classes))

    @classmethod
    def from_config(cls, name: str, num_classes: int, in_channels: int = 1, **overrides: Any) -> "UNetClassifier":
        """The named configuration of :data:`CLASSIFIER_CONFIGS` ("tiny", "small"), with ``overrides``."""
        if name not in CLASSIFIER_CONFIGS:
            raise ValueError(f"name must be one of {sorted(CLASSIFIER_CONFIGS)}, got {name!r}")
        arguments = {**CLASSIFIER_CONFIGS[name], "num_classes": num_classes, "in_channels": in_channels, **overrides}
        check_arguments(cls, arguments, f"UNetClassifier.from_config({name!r})")
        return cls(**arguments)

    @property
    def config(self) -> Dict[str, Any]:
        return constructor_config(
            "UNetClassifier", num_classes=self.num_classes, in_channels=self.in_channels, channels=self.channels,
            channel_mult=self.channel_mult, num_res_blocks=self.num_res_blocks, attn_resolutions=self.attn_resolutions,
            dropout=self.dropout, time_embedding=self.time_embedding, embedding_scale=self.embedding_scale,
            resample=self.resample, groups=self.groups, num_heads=self.num_heads, image_size=self.image_size)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (batch, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        if x.shape[2] % self.divisor or x.shape[3] % self.divisor:
            raise ValueError(f"x has shape {tuple(x.shape)}: H and W must be divisible by {self.divisor} "
                             f"(2^(levels−1) for {len(self.channel_mult)} levels)")
        cond = F.silu(self.cond(t, None, x.shape[0]))
        h = self.input(x)
        for module in (*self.down, *self.mid):
            h = module(h, cond)
        return self.head(F.silu(self.out_norm(h)).mean(dim=(2, 3)))


class MLPClassifier(nn.Module):
    """Residual MLP ``net(x, t)`` → logits (B, num_classes) for x of shape (B, dim); the score MLP's trunk."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 128, depth: int = 3, time_embedding: str = "fourier",
                 embedding_scale: Optional[float] = None, dropout: float = 0.0):
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.num_classes = positive_int(num_classes, "num_classes")
        self.hidden = positive_int(hidden, "hidden")
        self.depth = positive_int(depth, "depth")
        self.dropout = check_dropout(dropout)
        self.time_embedding = time_embedding
        self.embedding_scale = None if embedding_scale is None else float(embedding_scale)
        feature_dim, cond_dim = max(64, 2 * (self.hidden // 4)), max(32, self.hidden // 4)  # as in MLP
        self.cond = Conditioning(time_embedding, feature_dim, cond_dim, embedding_scale)
        self.input = nn.Linear(self.dim, self.hidden)
        self.blocks = nn.ModuleList(MLPBlock(self.hidden, cond_dim, self.dropout) for _ in range(self.depth))
        self.out_norm = nn.LayerNorm(self.hidden)
        self.head = zero_(nn.Linear(self.hidden, self.num_classes))

    @property
    def config(self) -> Dict[str, Any]:
        return constructor_config("MLPClassifier", dim=self.dim, num_classes=self.num_classes, hidden=self.hidden,
                                  depth=self.depth, time_embedding=self.time_embedding,
                                  embedding_scale=self.embedding_scale, dropout=self.dropout)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}), got shape {tuple(x.shape)}")
        cond = F.silu(self.cond(t, None, x.shape[0]))
        h = self.input(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.head(F.silu(self.out_norm(h)))


def classifier_config(name: str, shape: Sequence[int], num_classes: int,
                      overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The JSON config of classifier ``name`` ("mlp" or a named :data:`CLASSIFIER_CONFIGS` entry) for data of ``shape``."""
    overrides = {k: v for k, v in (overrides or {}).items() if k != "type"}
    shape = tuple(shape)
    if name == "mlp":
        if len(shape) != 1:
            raise ValueError(f"net 'mlp' is a classifier for vectors (D,), but the data has samples of shape {shape}; "
                             f"use one of {sorted(CLASSIFIER_CONFIGS)}")
        return MLPClassifier(dim=shape[0], num_classes=num_classes, **overrides).config
    if name not in CLASSIFIER_CONFIGS:
        raise ValueError(f"net must be 'mlp' or one of {sorted(CLASSIFIER_CONFIGS)}, got {name!r}")
    if len(shape) != 3:
        raise ValueError(f"net {name!r} is an image classifier (C, H, W), but the data has samples of shape {shape}; "
                         "use --net mlp")
    return UNetClassifier.from_config(name, num_classes=num_classes, in_channels=shape[0], **overrides).config
