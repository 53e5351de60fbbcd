"""The one abstract class every forward process derives from.

A linear SDE  dx = f(t) x dt + g(t) dW,  t ∈ [0, T],  has Gaussian marginals

    x_t | x_0 ~ N(α(t) x_0, σ(t)² I),   α(t) = exp ∫₀ᵗ f,   σ(t)² = α(t)² (σ(0)² + ∫₀ᵗ g²/α²),

so f = d log α/dt and g² = dσ²/dt − 2 f σ².  Everything a sampler needs follows from α and σ
(Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations").

Subclasses implement four float64 functions of a validated time tensor: ``_log_alpha``,
``_log_sigma``, ``_f`` and ``_g2``; the public methods validate, broadcast and cast.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._checks import TimeLike, as_float64_time, check_batch, check_finite, per_sample


class LinearSDE(ABC):
    """Abstract linear SDE dx = f(t) x dt + g(t) dW with closed-form (or tabulated) marginals."""

    #: end of the forward process; samplers start here
    T: float = 1.0
    #: smallest time samplers integrate down to (the score is singular at t = 0)
    eps: float = 1e-3
    #: number of discrete steps of a discrete-time process (DDPM), None for continuous time
    num_steps: Optional[int] = None

    # ----- what a subclass provides (float64 tensors in, float64 tensors out) -----
    @abstractmethod
    def _log_alpha(self, t: Tensor) -> Tensor:
        """log α(t)."""

    @abstractmethod
    def _log_sigma(self, t: Tensor) -> Tensor:
        """log σ(t) (−inf where σ = 0)."""

    @abstractmethod
    def _f(self, t: Tensor) -> Tensor:
        """Drift coefficient f(t) = d log α/dt."""

    @abstractmethod
    def _g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient g(t)² = dσ²/dt − 2 f σ²."""

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of λ(t) = log α − log σ; bisection on the monotone λ (subclasses override with closed forms)."""
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            above = self._log_snr(mid) > lam  # λ decreases in t: the root lies to the right
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    # ----- derived internals -----
    def _log_snr(self, t: Tensor) -> Tensor:
        return self._log_alpha(t) - self._log_sigma(t)

    @property
    def prior_std(self) -> float:
        """Std of the prior N(0, prior_std² I) that sampling starts from (σ(T) unless a subclass fixes it)."""
        return float(self._log_sigma(torch.tensor(self.T, dtype=torch.float64)).exp())

    # ----- validation -----
    def _time(self, t: TimeLike, name: str = "t") -> Tensor:
        t64 = as_float64_time(t, name)
        slack = 1e-9 * self.T + 1e-12
        if t64.numel() and (t64.min() < -slack or t64.max() > self.T + slack):
            raise ValueError(
                f"{name} must lie in [0, T={self.T:g}]; got values in [{float(t64.min()):.6g}, {float(t64.max()):.6g}]"
            )
        return t64.clamp(0.0, self.T)

    @staticmethod
    def _like(value: Tensor, t: TimeLike) -> Tensor:
        """Return in t's dtype and device when t is a floating tensor, else as float64."""
        if isinstance(t, Tensor) and t.is_floating_point():
            return value.to(device=t.device, dtype=t.dtype)
        return value

    # ----- public API: schedule functions -----
    def f(self, t: TimeLike) -> Tensor:
        """Drift coefficient f(t) of dx = f x dt + g dW."""
        return self._like(self._f(self._time(t)), t)

    def g(self, t: TimeLike) -> Tensor:
        """Diffusion coefficient g(t)."""
        return self._like(self._g2(self._time(t)).clamp_min(0).sqrt(), t)

    def g2(self, t: TimeLike) -> Tensor:
        """Squared diffusion coefficient g(t)²."""
        return self._like(self._g2(self._time(t)), t)

    def alpha(self, t: TimeLike) -> Tensor:
        """Marginal mean coefficient α(t) = exp ∫₀ᵗ f."""
        return self._like(self._log_alpha(self._time(t)).exp(), t)

    def sigma(self, t: TimeLike) -> Tensor:
        """Marginal standard deviation σ(t)."""
        return self._like(self._log_sigma(self._time(t)).exp(), t)

    def log_snr(self, t: TimeLike) -> Tensor:
        """λ(t) = log(α(t)/σ(t)), strictly decreasing in t."""
        return self._like(self._log_snr(self._time(t)), t)

    def t_of_log_snr(self, lam: TimeLike) -> Tensor:
        """The time t at which λ(t) = lam (inverse of :meth:`log_snr`)."""
        lam64 = as_float64_time(lam, "lam")
        lam_min, lam_max = self._log_snr(torch.tensor([self.T, 0.0], dtype=torch.float64)).tolist()
        if lam64.numel() and (lam64.min() < lam_min - 1e-9 or lam64.max() > lam_max + 1e-9):
            raise ValueError(f"lam must lie in [λ(T)={lam_min:.6g}, λ(0)={lam_max:.6g}]; got {lam64}")
        return self._like(self._t_of_log_snr(lam64).clamp(0.0, self.T), lam)

    # ----- public API: marginals and prior -----
    def marginal(self, x0: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """Mean α(t) x0 and std σ(t) (broadcastable to x0) of x_t | x_0."""
        check_finite(x0, "x0")
        t64 = self._time(t)
        check_batch(t64, x0, "t", "x0")
        mean = per_sample(self._log_alpha(t64).exp(), x0) * x0
        std = per_sample(self._log_sigma(t64).exp(), x0)
        return mean, std

    def perturb(self, x0: Tensor, t: TimeLike, noise: Tensor) -> Tensor:
        """x_t = α(t) x0 + σ(t) noise."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        check_finite(noise, "noise")
        mean, std = self.marginal(x0, t)
        return mean + std * noise

    def prior_sample(
        self,
        shape: Sequence[int],
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device | str] = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """x_T ~ N(0, prior_std² I), drawn as one ``torch.randn(shape, generator=generator)``."""
        shape = tuple(int(s) for s in shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape}")
        z = randn(shape, generator, device, dtype)
        return z * self.prior_std

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std² I), summed over all but the batch dimension."""
        check_finite(z, "z")
        d = z[0].numel()
        s2 = self.prior_std**2
        sq = z.reshape(z.shape[0], -1).double().pow(2).sum(1)
        return (-0.5 * d * math.log(2 * math.pi * s2) - 0.5 * sq / s2).to(z.dtype)

    # ----- public API: reverse-time dynamics given a score -----
    def reverse_drift(self, x: Tensor, t: TimeLike, score: Tensor) -> Tensor:
        """Drift of the reverse SDE dx = [f x − g² s] dt + g dW̄ (time running T → 0)."""
        t64 = self._time(t)
        check_batch(t64, x)
        return per_sample(self._f(t64), x) * x - per_sample(self._g2(t64), x) * score

    def probability_flow_drift(self, x: Tensor, t: TimeLike, score: Tensor) -> Tensor:
        """Right-hand side of the probability-flow ODE dx/dt = f x − ½ g² s."""
        t64 = self._time(t)
        check_batch(t64, x)
        return per_sample(self._f(t64), x) * x - 0.5 * per_sample(self._g2(t64), x) * score

    def transition(self, s: TimeLike, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """(α_{t|s}, σ_{t|s}) of the forward kernel x_t | x_s ~ N(α_{t|s} x_s, σ_{t|s}² I) for s ≤ t."""
        s64, t64 = self._time(s, "s"), self._time(t, "t")
        if (s64 > t64).any():
            raise ValueError(f"s must not exceed t, got s={s64}, t={t64}")
        a = (self._log_alpha(t64) - self._log_alpha(s64)).exp()
        var = (2 * self._log_sigma(t64)).exp() - a**2 * (2 * self._log_sigma(s64)).exp()
        return self._like(a, t), self._like(var.clamp_min(0).sqrt(), t)

    # ----- constructors -----
    @staticmethod
    def from_coefficients(
        f: Callable[[Tensor], Tensor],
        g: Callable[[Tensor], Tensor],
        T: float = 1.0,
        eps: float = 1e-3,
        sigma0: float = 0.0,
        knots: int = 4096,
    ) -> "LinearSDE":
        """Any linear SDE from its coefficients: marginals integrated numerically once, then interpolated.

        ``f`` and ``g`` take a float64 tensor of times and return tensors (or scalars). ``sigma0`` is
        σ(0), the noise level already in the data at t = 0 (VESDE uses σ_min).
        """
        from .tabulated import TabulatedSDE

        return TabulatedSDE(f, g, T=T, eps=eps, sigma0=sigma0, knots=knots)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def randn(
    shape: Sequence[int],
    generator,
    device: Optional[torch.device | str] = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``torch.randn(shape, generator=generator)`` drawn on the generator's device, then moved.

    This is the only way the package draws Gaussian noise: same generator state, same numbers,
    on any device (as diffusers' ``randn_tensor``). ``generator`` may also be a list of ``shape[0]``
    generators, one per sample (as diffusers accepts): row i is then drawn from generator i alone, so a
    sample's noise does not depend on the batch it is drawn in.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"generator is a list of {len(generator)} generators, but the batch has {shape[0]} samples")
        rows = [randn(tuple(shape[1:]), g, device, dtype) for g in generator]
        return torch.stack(rows) if rows else torch.empty(tuple(shape), device=device, dtype=dtype)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, a list of them or None, got {type(generator).__name__}")
    draw_device = generator.device if generator is not None else device
    z = torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype)
    return z.to(device) if device is not None else z
