"""Per-data-set defaults of ``sde-diffusion train``: what ``train --data NAME --out DIR`` alone uses.

Sized for 2 CPU cores: digits trains in ≤ 10 minutes, the 2-D toy sets in ≤ 1 minute.
Precedence when a run is configured: these defaults < a ``--config`` file < command-line flags.
"""
from __future__ import annotations

from typing import Any, Dict

TOY = {"net": "mlp", "sde": "vp", "prediction": "eps",
       "train": {"steps": 3000, "batch_size": 512, "lr": 2e-3, "warmup": 100, "ema_decay": 0.995,
                 "checkpoint_every": 1000, "log_every": 100, "sample_n": 2000, "sampler": "dpm_solver", "sample_steps": 20}}

PRESETS: Dict[str, Dict[str, Any]] = {
    "digits": {"net": "tiny", "sde": "vp", "prediction": "eps",
               "train": {"steps": 4000, "batch_size": 128, "lr": 2e-3, "warmup": 200, "ema_decay": 0.999,
                         "checkpoint_every": 1000, "log_every": 100, "sample_n": 100}},
    "mnist": {"net": "small", "sde": "vp", "prediction": "eps",
              "train": {"steps": 20000, "batch_size": 64, "lr": 5e-4, "warmup": 500, "ema_decay": 0.9995,
                        "checkpoint_every": 2000, "log_every": 100, "sample_n": 100}},
    "image": {"net": "small", "sde": "vp", "prediction": "eps",
              "train": {"steps": 20000, "batch_size": 64, "lr": 5e-4, "warmup": 500, "ema_decay": 0.9995}},
    "vector": TOY,
}


def preset_for(data_name: str, kind: str, image_height: int = 0) -> Dict[str, Any]:
    """The defaults for a named data set, or for a user's images (tiny net up to 16 px) or vectors."""
    if data_name in PRESETS:
        return PRESETS[data_name]
    if kind == "image":
        preset = dict(PRESETS["image"])
        if image_height <= 16:
            preset["net"] = "tiny"
        return preset
    return PRESETS["vector"]


def net_config(name: str, shape, num_classes=None, overrides: Dict[str, Any] | None = None) -> Dict[str, Any]:
    """The JSON config of network ``name`` ("mlp" or a named UNet config) for data of ``shape``."""
    from .. import nets

    overrides = dict(overrides or {})
    overrides.pop("type", None)
    shape = tuple(shape)
    if name == "mlp":
        if len(shape) != 1:
            raise ValueError(f"net 'mlp' is for vector data (D,), but the data has samples of shape {shape}; use a UNet config")
        return nets.MLP(dim=shape[0], num_classes=num_classes, **overrides).config
    if name not in nets.CONFIGS:
        raise ValueError(f"net must be 'mlp' or one of {sorted(nets.CONFIGS)}, got {name!r}")
    if len(shape) != 3:
        raise ValueError(f"net {name!r} is a UNet for images (C, H, W), but the data has samples of shape {shape}; use --net mlp")
    return nets.UNet.from_config(name, in_channels=shape[0], num_classes=num_classes, **overrides).config
