"""A monotone network for a learnable noise schedule (Kingma et al. 2021, "Variational Diffusion Models", App. H).

VDM's noise-schedule network, a sum of a linear term and K sigmoid features with positive weights,

    ĝ(u) = a u + (1/K) Σ_k c_k (2 sigmoid(w_k (2u − 1) + b_k) − 1),    a, c_k, w_k = softplus(·) > 0,

is increasing in u. Normalised between learnable end points γ_min < γ_max it gives the negative log-SNR

    γ(u) = γ_min + (γ_max − γ_min) r(u),    r(u) = (ĝ(u) − ĝ(0)) / (ĝ(1) − ĝ(0)),

exact at u = 0 and u = 1 whatever the interior parameters η = (a, c, w, b) are, so the end points are
separate parameters (trained by the ELBO) from the interior (trained by VDM's variance objective).
r and dr/du are closed forms: dĝ/du = a + (1/K) Σ_k 4 c_k w_k s_k (1 − s_k), s_k = sigmoid(w_k (2u − 1) + b_k).

The parameters are float64 (the schedule feeds the float64 SDE interface). At initialisation ĝ is nearly
linear: a = 1 and c_k ≈ 0.05, the features' centres spread over [0, 1] (fixed seed: one init per width).
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import positive_int

F64 = torch.float64
#: the seed of the interior's initial weights: two schedules of one width start identical
SCHEDULE_SEED = 0
INTERIOR = ("linear", "feature_weight", "feature_bias", "feature_scale")
ENDPOINTS = ("gamma_min", "gamma_max")


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


class MonotoneLogSNR(nn.Module):
    """γ(u) on u ∈ [0, 1] with exact end points γ(0) = γ_min, γ(1) = γ_max; ``width`` = K sigmoid features."""

    def __init__(self, gamma_min: float, gamma_max: float, width: int = 1024):
        super().__init__()
        gamma_min, gamma_max = float(gamma_min), float(gamma_max)
        if not (math.isfinite(gamma_min) and math.isfinite(gamma_max) and gamma_min < gamma_max):
            raise ValueError(f"gamma_min and gamma_max must be finite with gamma_min < gamma_max, got {gamma_min}, {gamma_max}")
        self.width = positive_int(width, "width")
        g = torch.Generator().manual_seed(SCHEDULE_SEED)
        w = F.softplus(2.0 + torch.randn(self.width, generator=g, dtype=F64))
        centres = torch.rand(self.width, generator=g, dtype=F64)
        self.gamma_min = nn.Parameter(torch.tensor(gamma_min, dtype=F64))
        self.gamma_max = nn.Parameter(torch.tensor(gamma_max, dtype=F64))
        self.linear = nn.Parameter(_inverse_softplus(torch.tensor(1.0, dtype=F64)))
        self.feature_weight = nn.Parameter(_inverse_softplus(w))
        self.feature_bias = nn.Parameter(-w * (2 * centres - 1))
        self.feature_scale = nn.Parameter(torch.full((self.width,), -3.0, dtype=F64) + 0.5 * torch.randn(self.width, generator=g, dtype=F64))

    # ----- the math -----
    def _g_hat(self, u: Tensor) -> Tuple[Tensor, Tensor]:
        """ĝ(u) and dĝ/du, shape of u."""
        a, w, c = F.softplus(self.linear), F.softplus(self.feature_weight), F.softplus(self.feature_scale)
        s = torch.sigmoid(u[..., None] * (2 * w) + (self.feature_bias - w))
        value = a * u + ((2 * s - 1) * c).mean(-1)
        slope = a + (4 * c * w * s * (1 - s)).mean(-1)
        return value, slope

    def shape(self, u: Tensor) -> Tuple[Tensor, Tensor]:
        """r(u) = (ĝ(u) − ĝ(0))/(ĝ(1) − ĝ(0)) and dr/du: the interior's part of γ (no end-point dependence)."""
        if not isinstance(u, Tensor):
            raise TypeError(f"u must be a tensor, got {type(u).__name__}")
        value, slope = self._g_hat(u.to(F64))
        ends, _ = self._g_hat(torch.tensor([0.0, 1.0], dtype=F64, device=self.linear.device))
        span = ends[1] - ends[0]
        return (value - ends[0]) / span, slope / span

    def forward(self, u: Tensor) -> Tuple[Tensor, Tensor]:
        """γ(u) and dγ/du (float64, differentiable in every parameter)."""
        r, dr = self.shape(u)
        span = self.gamma_max - self.gamma_min
        return self.gamma_min + span * r, span * dr

    # ----- parameter groups -----
    def interior_parameters(self) -> List[nn.Parameter]:
        """η: the shape of γ between the end points (VDM: trained to minimise the ELBO estimator's variance)."""
        return [getattr(self, name) for name in INTERIOR]

    def endpoint_parameters(self) -> List[nn.Parameter]:
        """γ_min, γ_max (trained by the ELBO)."""
        return [getattr(self, name) for name in ENDPOINTS]

    # ----- JSON form -----
    def to_lists(self) -> Dict[str, object]:
        """Every parameter as a float or a list of floats (exact through a JSON round trip)."""
        return {name: p.detach().cpu().tolist() for name, p in self.named_parameters()}

    def load_lists(self, values: Dict[str, object]) -> None:
        """Set the parameters from :meth:`to_lists` output; names and sizes must match."""
        names = [name for name, _ in self.named_parameters()]
        if not isinstance(values, dict) or sorted(values) != sorted(names):
            got = sorted(values) if isinstance(values, dict) else type(values).__name__
            raise ValueError(f"schedule weights must be a dict with keys {sorted(names)}, got {got}")
        with torch.no_grad():
            for name, p in self.named_parameters():
                value = torch.as_tensor(values[name], dtype=F64)
                if value.shape != p.shape:
                    raise ValueError(f"schedule weight {name!r} must have shape {tuple(p.shape)}, got {tuple(value.shape)}")
                p.copy_(value)
        low, high = self.gamma_min.item(), self.gamma_max.item()
        if not low < high:
            raise ValueError(f"schedule weights need gamma_min < gamma_max, got {low}, {high}")

    def extra_repr(self) -> str:
        return f"width={self.width}, gamma_min={self.gamma_min.item():.4g}, gamma_max={self.gamma_max.item():.4g}"
