"""Exponential moving average of a network's weights (Polyak averaging; score_sde and EDM sample from it).

    θ_ema ← β θ_ema + (1 − β) θ,   β_n = min(decay, (1 + n)/(10 + n)),

the ramp (as in diffusers' EMAModel and TensorFlow's ExponentialMovingAverage with num_updates) keeps the
first updates from being dominated by the random initialisation. Buffers are copied, not averaged.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
from torch import Tensor, nn


class EMA:
    """A frozen copy of ``net`` tracking its weights; ``update(net)`` after every optimizer step."""

    def __init__(self, net: nn.Module, decay: float = 0.999):
        if not 0 <= decay < 1:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self._pairs = None  # (source net, ema params, source params, buffer pairs), built on first update

    def rate(self) -> float:
        """β for the next update."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        if self._pairs is None or self._pairs[0] is not net:
            self._pairs = (net, list(self.net.parameters()), [p.detach() for p in net.parameters()],
                           list(zip(self.net.buffers(), net.buffers())))
        _, ema_params, params, buffers = self._pairs
        torch._foreach_lerp_(ema_params, params, 1.0 - self.rate())
        for b_ema, b in buffers:
            b_ema.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> Dict[str, Tensor]:
        return self.net.state_dict()

    def load_state_dict(self, state: Dict[str, Tensor], num_updates: int) -> None:
        self.net.load_state_dict(state)  # copies into the same tensors, so the cached lists stay valid
        self.num_updates = int(num_updates)
