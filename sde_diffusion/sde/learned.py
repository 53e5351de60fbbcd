"""A variance-preserving SDE with a learnable noise schedule (Kingma et al. 2021, "Variational Diffusion Models").

The schedule is the negative log-SNR γ(t) = −log(α²/σ²) = −2λ(t), increasing in t, given by a monotone
network (:class:`~sde_diffusion.nets.schedule.MonotoneLogSNR`) of u = (t − eps)/(T − eps) with exact
learnable end points γ(eps) = γ_min, γ(T) = γ_max (VDM's t = 0 and 1 are the training range's eps and T
here; below eps the monotone network extrapolates). Variance preserving:

    α² = sigmoid(−γ),   σ² = sigmoid(γ),
    f = d log α/dt = ½ d/dt log sigmoid(−γ) = −½ σ² γ',
    g² = dσ²/dt − 2 f σ² = σ² α² γ' + σ⁴ γ' = σ² γ'.

Samplers and the likelihood see the float64, gradient-free :class:`LinearSDE` interface; the loss uses the
differentiable :meth:`LearnedVPSDE.gamma`, :meth:`~LearnedVPSDE.gamma_prime` and :meth:`~LearnedVPSDE.gamma_shape`.
Unlike the rest of ``sde/`` this class holds trainable state: the schedule module (built from
:mod:`sde_diffusion.nets.schedule`, the one import of this layer from above it).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import horizon, positive_int
from .base import LinearSDE
from .vp import VPSDE

F64 = torch.float64
SPEC_NAME = "learned"


class LearnedVPSDE(LinearSDE):
    """VP SDE whose log-SNR is learned; end points default to those of ``like`` (a VPSDE) at eps and T."""

    def __init__(self, like: Optional[LinearSDE] = None, *, width: int = 1024, T: Optional[float] = None,
                 eps: Optional[float] = None):
        from ..nets.schedule import MonotoneLogSNR

        if like is not None and not isinstance(like, LinearSDE):
            raise TypeError(f"like must be a sde_diffusion.LinearSDE (whose log-SNR end points to start from), "
                            f"got {type(like).__name__}")
        T = float(like.T if like is not None and T is None else 1.0 if T is None else T)
        eps = float(like.eps if like is not None and eps is None else 1e-3 if eps is None else eps)
        self.T, self.eps = horizon(T, eps)
        like = VPSDE(T=self.T, eps=self.eps) if like is None else like
        if self.T > like.T:
            raise ValueError(f"T must not exceed like's T = {like.T} (its log-SNR gives the end points), got {self.T}")
        gamma_eps, gamma_T = (-2 * like._log_snr(torch.tensor([self.eps, self.T], dtype=F64))).tolist()
        self.schedule = MonotoneLogSNR(gamma_eps, gamma_T, positive_int(width, "width"))

    # ----- the differentiable schedule (for the loss) -----
    def _u(self, t: Tensor) -> Tensor:
        return (t.to(device=self.schedule.linear.device, dtype=F64) - self.eps) / (self.T - self.eps)

    def gamma_shape(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        """r(t) ∈ [0, 1] and dr/dt with γ = γ_min + (γ_max − γ_min) r: the part the interior parameters set."""
        r, dr_du = self.schedule.shape(self._u(t))
        return r, dr_du / (self.T - self.eps)

    def gamma(self, t: Tensor) -> Tensor:
        """γ(t) = −log SNR(t), differentiable in every schedule parameter (float64, on the schedule's device)."""
        r, _ = self.gamma_shape(t)
        return self.gamma_min + (self.gamma_max - self.gamma_min) * r

    def gamma_prime(self, t: Tensor) -> Tensor:
        """dγ/dt > 0, differentiable."""
        _, dr = self.gamma_shape(t)
        return (self.gamma_max - self.gamma_min) * dr

    @property
    def gamma_min(self) -> Tensor:
        """γ(eps), a parameter."""
        return self.schedule.gamma_min

    @property
    def gamma_max(self) -> Tensor:
        """γ(T), a parameter."""
        return self.schedule.gamma_max

    # ----- parameters -----
    def parameters(self) -> List[torch.nn.Parameter]:
        return list(self.schedule.parameters())

    def interior_parameters(self) -> List[torch.nn.Parameter]:
        return self.schedule.interior_parameters()

    def endpoint_parameters(self) -> List[torch.nn.Parameter]:
        return self.schedule.endpoint_parameters()

    def to(self, device) -> "LearnedVPSDE":
        """Move the schedule's parameters to ``device`` (in place; returns self)."""
        self.schedule.to(device)
        return self

    # ----- the LinearSDE interface: float64, no gradient, on t's device -----
    def _gamma64(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        times, inverse = torch.unique(t, return_inverse=True)  # samplers pass one time broadcast over the batch
        with torch.no_grad():
            gamma, dgamma_du = self.schedule(self._u(times))
        return gamma[inverse].to(t.device), dgamma_du[inverse].to(t.device) / (self.T - self.eps)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * F.logsigmoid(-self._gamma64(t)[0])

    def _log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * F.logsigmoid(self._gamma64(t)[0])

    def _f(self, t: Tensor) -> Tensor:
        gamma, dgamma = self._gamma64(t)
        return -0.5 * torch.sigmoid(gamma) * dgamma

    def _g2(self, t: Tensor) -> Tensor:
        gamma, dgamma = self._gamma64(t)
        return torch.sigmoid(gamma) * dgamma

    @property
    def prior_std(self) -> float:
        return 1.0

    # ----- checkpoints: a JSON spec with the weights -----
    def spec(self) -> Dict[str, Any]:
        """``{"name": "learned", "T", "eps", "width", "weights"}``; :meth:`from_spec` rebuilds it exactly."""
        return {"name": SPEC_NAME, "T": self.T, "eps": self.eps, "width": self.schedule.width,
                "weights": self.schedule.to_lists()}

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> "LearnedVPSDE":
        """The SDE of :meth:`spec`; without ``weights`` a fresh schedule (VP end points, near-linear interior)."""
        spec = dict(spec)
        if spec.pop("name", SPEC_NAME) != SPEC_NAME:
            raise ValueError(f"spec must name {SPEC_NAME!r}, got {spec}")
        weights = spec.pop("weights", None)
        unknown = sorted(set(spec) - {"T", "eps", "width"})
        if unknown:
            raise ValueError(f"bad arguments for sde 'learned': unknown keys {unknown}; valid: T, eps, width, weights")
        sde = cls(**spec)
        if weights is not None:
            sde.schedule.load_lists(weights)
        return sde

    def load_spec(self, spec: Dict[str, Any]) -> None:
        """Take the weights of another schedule's spec (same T, eps and width), in place."""
        if not isinstance(spec, dict) or spec.get("name") != SPEC_NAME or "weights" not in spec:
            raise ValueError(f"spec must be a {SPEC_NAME!r} SDE spec with weights, got "
                             + (f"name {spec.get('name')!r}" if isinstance(spec, dict) else type(spec).__name__))
        mine = (self.T, self.eps, self.schedule.width)
        theirs = (spec.get("T"), spec.get("eps"), spec.get("width"))
        if mine != theirs:
            raise ValueError(f"spec's (T, eps, width) = {theirs} differ from this schedule's {mine}")
        self.schedule.load_lists(spec["weights"])

    def __repr__(self) -> str:
        return (f"LearnedVPSDE(gamma_min={self.gamma_min.item():.4g}, gamma_max={self.gamma_max.item():.4g}, "
                f"width={self.schedule.width}, T={self.T}, eps={self.eps})")
