"""A DDPM++-style UNet score network for images (B, C, H, W) (Song et al. 2021, score_sde ``ncsnpp``/``ddpm``).

Layout, with L = len(channel_mult) levels and width_l = channels·channel_mult[l]:

    Conv₃ₓ₃ → for l < L: num_res_blocks × [ResBlock → (Attn)] → Downsample (not after the last level)
            → middle: ResBlock → Attn → ResBlock
            → for l = L−1 … 0: (num_res_blocks + 1) × ResBlock(concat with the matching down-path skip)
                                → (Attn once) → Upsample (not after level 0)
            → GN → SiLU → Conv₃ₓ₃ (zero-initialised, so a fresh net outputs exactly 0)

Attention sits at the levels whose resolution image_size / 2^l is listed in ``attn_resolutions`` (score_sde's
rule; ``image_size`` fixes the levels, the net then runs on any H, W divisible by 2^(L−1)), and in the middle.
The conditioning c = SiLU(MLP(e(t)) + E[y]) of width 4·channels modulates every residual block by scale-shift
(adaptive group norm); blocks and attention are in :mod:`.layers`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import positive_int
from ._config import check_arguments, check_dropout, constructor_config
from .conditioning import Conditioning
from .layers import RESAMPLE, AttentionBlock, Downsample, ResAttn, ResBlock, Upsample, group_norm, zero_


def _int_tuple(values: Sequence[int], name: str, allow_empty: bool = False) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of positive integers, got {values!r}")
    if not values and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return tuple(positive_int(v, name) for v in values)


def level_resolutions(image_size: int, channel_mult: Sequence[int], attn_resolutions: Sequence[int]) -> list:
    """The side length at each level (image_size / 2^level), checking divisibility and the attention resolutions."""
    divisor = 2 ** (len(channel_mult) - 1)
    if image_size % divisor:
        raise ValueError(f"image_size must be divisible by {divisor} (2^(levels−1) for "
                         f"{len(channel_mult)} levels), got {image_size}")
    resolutions = [image_size // 2**level for level in range(len(channel_mult))]
    unmatched = sorted(set(attn_resolutions) - set(resolutions))
    if unmatched:
        raise ValueError(f"attn_resolutions {list(attn_resolutions)}: {unmatched} match no level of "
                         f"image_size {image_size} (level resolutions {resolutions})")
    return resolutions


class UNet(nn.Module):
    """DDPM++-style UNet ``net(x, t, y=None)``; x of shape (B, in_channels, H, W), output (B, out_channels, H, W)."""

    def __init__(self, in_channels: int = 1, out_channels: Optional[int] = None, channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, num_classes: Optional[int] = None,
                 time_embedding: str = "sinusoidal", embedding_scale: Optional[float] = None,
                 resample: str = "avgpool", skip_rescale: bool = True, groups: int = 32, num_heads: int = 1,
                 image_size: int = 32):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = self.in_channels if out_channels is None else positive_int(out_channels, "out_channels")
        self.channels = positive_int(channels, "channels")
        self.channel_mult = _int_tuple(channel_mult, "channel_mult")
        self.num_res_blocks = positive_int(num_res_blocks, "num_res_blocks")
        self.attn_resolutions = _int_tuple(attn_resolutions, "attn_resolutions", allow_empty=True)
        self.dropout = check_dropout(dropout)
        if resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {RESAMPLE}, got {resample!r}")
        if not isinstance(skip_rescale, bool):
            raise TypeError(f"skip_rescale must be a bool, got {skip_rescale!r}")
        self.resample, self.skip_rescale = resample, skip_rescale
        self.groups = positive_int(groups, "groups")
        self.num_heads = positive_int(num_heads, "num_heads")
        self.image_size = positive_int(image_size, "image_size")
        self.time_embedding = time_embedding
        self.embedding_scale = None if embedding_scale is None else float(embedding_scale)
        self.divisor = 2 ** (len(self.channel_mult) - 1)
        resolutions = level_resolutions(self.image_size, self.channel_mult, self.attn_resolutions)

        cond_dim = 4 * self.channels
        self.cond = Conditioning(time_embedding, 2 * ((self.channels + 1) // 2), cond_dim, embedding_scale, num_classes)
        self.num_classes = self.cond.num_classes
        res = lambda cin, cout: ResBlock(cin, cout, cond_dim, self.dropout, skip_rescale, self.groups)  # noqa: E731
        attn = lambda ch: AttentionBlock(ch, self.num_heads, skip_rescale, self.groups)  # noqa: E731

        self.input = nn.Conv2d(self.in_channels, self.channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips: List[int] = [self.channels]
        ch = self.channels
        for level, mult in enumerate(self.channel_mult):
            use_attn = resolutions[level] in self.attn_resolutions
            for _ in range(self.num_res_blocks):
                self.down.append(ResAttn(res(ch, self.channels * mult), attn(self.channels * mult) if use_attn else None))
                ch = self.channels * mult
                skips.append(ch)
            if level != len(self.channel_mult) - 1:
                self.down.append(Downsample(ch, resample))
                skips.append(ch)
        self.mid = nn.ModuleList([ResAttn(res(ch, ch), attn(ch)), ResAttn(res(ch, ch))])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            use_attn = resolutions[level] in self.attn_resolutions
            for block in range(self.num_res_blocks + 1):
                last = block == self.num_res_blocks
                self.up.append(ResAttn(res(ch + skips.pop(), self.channels * mult),
                                       attn(self.channels * mult) if use_attn and last else None))
                ch = self.channels * mult
            if level != 0:
                self.up.append(Upsample(ch, resample))
        self.out_norm = group_norm(ch, self.groups)
        self.output = zero_(nn.Conv2d(ch, self.out_channels, 3, padding=1))

    @classmethod
    def from_config(cls, name: str, in_channels: int = 1, num_classes: Optional[int] = None, **overrides: Any) -> "UNet":
        """The named configuration of :data:`.configs.CONFIGS` ("tiny", "small", "ddpmpp"), with ``overrides``."""
        from .configs import CONFIGS

        if name not in CONFIGS:
            raise ValueError(f"name must be one of {sorted(CONFIGS)}, got {name!r}")
        arguments = {**CONFIGS[name], "in_channels": in_channels, "num_classes": num_classes, **overrides}
        check_arguments(cls, arguments, f"UNet.from_config({name!r})")
        return cls(**arguments)

    @property
    def config(self) -> Dict[str, Any]:
        return constructor_config(
            "UNet", in_channels=self.in_channels, out_channels=self.out_channels, channels=self.channels,
            channel_mult=self.channel_mult, num_res_blocks=self.num_res_blocks, attn_resolutions=self.attn_resolutions,
            dropout=self.dropout, num_classes=self.num_classes, time_embedding=self.time_embedding,
            embedding_scale=self.embedding_scale, resample=self.resample, skip_rescale=self.skip_rescale,
            groups=self.groups, num_heads=self.num_heads, image_size=self.image_size)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (batch, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        if x.shape[2] % self.divisor or x.shape[3] % self.divisor:
            raise ValueError(f"x has shape {tuple(x.shape)}: H and W must be divisible by {self.divisor} "
                             f"(2^(levels−1) for {len(self.channel_mult)} levels)")
        cond = F.silu(self.cond(t, y, x.shape[0]))
        h = self.input(x)
        hs = [h]
        for module in self.down:
            h = module(h, cond)
            hs.append(h)
        for module in self.mid:
            h = module(h, cond)
        for module in self.up:
            h = module(h, cond) if isinstance(module, Upsample) else module(torch.cat([h, hs.pop()], dim=1), cond)
        return self.output(F.silu(self.out_norm(h)))
