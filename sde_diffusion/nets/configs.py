"""Named UNet configurations for :meth:`UNet.from_config` (keyword arguments; ``in_channels`` and ``num_classes``
are given at build time). Parameter counts are for in_channels = 1 unconditional unless stated, as asserted
by the tests.

* ``"tiny"`` — 8×8 digits on 2 CPU cores: 32 channels, levels 8×8 and 4×4, one residual block per level,
  attention at 4×4. 692,065 parameters (0.69 M). One forward + backward at 8×8 (AMD EPYC, shared): batch 128 on
  1 thread ≈ 150–200 ms, batch 64 on 2 threads ≈ 45–70 ms; ~80 % of it is the 3×3 convolutions (≈ 9 GFLOP per
  batch-128 step), so narrower or shallower is the only way faster.
* ``"small"`` — 28×28 MNIST: 32 channels, levels 28, 14, 7, two residual blocks per level, attention at 7×7.
  1,589,313 parameters (1.59 M).
* ``"ddpmpp"`` — score_sde's DDPM++ (cont.) CIFAR-10 network (``configs/vp/cifar10_ddpmpp_continuous.py``):
  nf = 128, ch_mult = (1, 2, 2, 2), 4 residual blocks per level, attention at 16×16, dropout 0.1, skip rescale,
  positional (sinusoidal) embedding, conv resampling. At 32×32×3: 62,032,515 parameters; score_sde's ``NCSNpp``
  built from that config has 61,804,419 (counted from its code), +0.37 %. The gap is exactly two differences:
  score_sde's six down/upsamplings are BigGAN residual blocks (7,269,376 parameters) where ours are one 3×3 conv
  each (3,097,984), −4,171,392; our residual blocks project the embedding to a scale *and* a shift (2·C outputs,
  adaptive group norm) where score_sde's add a shift only (C outputs), +4,399,488 over the 38 blocks.
"""
from __future__ import annotations

from typing import Any, Dict

CONFIGS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
                 time_embedding="sinusoidal", resample="avgpool", skip_rescale=True, groups=8, num_heads=1,
                 image_size=8),
    "small": dict(channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,), dropout=0.1,
                  time_embedding="sinusoidal", resample="avgpool", skip_rescale=True, groups=8, num_heads=1,
                  image_size=28),
    "ddpmpp": dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.1,
                   time_embedding="sinusoidal", resample="conv", skip_rescale=True, groups=32, num_heads=1,
                   image_size=32),
}
