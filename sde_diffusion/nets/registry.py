"""Rebuild a network from its ``config`` (what checkpoints store), and count its parameters."""
from __future__ import annotations

from typing import Any, Dict, Mapping

from torch import nn

from ._config import check_arguments
from .classifier import MLPClassifier, UNetClassifier
from .mlp import MLP
from .unet import UNet

NETS: Dict[str, type] = {"MLP": MLP, "UNet": UNet, "MLPClassifier": MLPClassifier, "UNetClassifier": UNetClassifier}


def build(config: Mapping[str, Any]) -> nn.Module:
    """``build(net.config)`` gives the same architecture (same state_dict keys and shapes) as ``net``."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict with a 'type' key, got {type(config).__name__}")
    if config.get("type") not in NETS:
        raise ValueError(f"config['type'] must be one of {sorted(NETS)}, got {config.get('type')!r}")
    arguments = {k: v for k, v in config.items() if k != "type"}
    cls = NETS[config["type"]]
    check_arguments(cls, arguments, "build(config)")
    return cls(**arguments)


def parameter_count(net: nn.Module) -> int:
    """Number of trainable parameters (buffers such as Fourier frequencies are not counted)."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
