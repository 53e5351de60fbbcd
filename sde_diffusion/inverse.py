"""Inpainting, imputation and linear inverse problems with an unconditional score model.

Known coordinates: a boolean ``mask`` m (True = observed) and the observation y₀ (= x₀ on m).

* Replacement (Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. I.2): after each
  sampler step to time s the observed coordinates are overwritten by a forward-noised observation,

      x_s ← (1 − m) ⊙ x_s + m ⊙ (α(s) y₀ + σ(s) z),   z ~ N(0, I) drawn from the generator;

  with a predictor–corrector sampler the replacement follows the predictor and every corrector step.
  It conditions only approximately: the unknown coordinates never see the noise z drawn for the known ones.
* RePaint resampling (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
  Models", Alg. 1 and §4.2): after ``jump_length`` = j steps t_k → … → t_{k+j} with replacement, re-noise
  by the forward kernel x_{t_k} = α_{t_k|t_{k+j}} x_{t_{k+j}} + σ_{t_k|t_{k+j}} z (one draw: the j one-step
  kernels compose into this Gaussian) and redo the j steps, ``resample`` times, so the unknown part
  harmonises with the known part. RePaint's published setting is j = 10, r = 9 on 250 steps.
* Diffusion posterior sampling (Chung et al. 2023, "Diffusion Posterior Sampling for General Noisy
  Inverse Problems", Alg. 1) for y = A(x₀) + n with any differentiable operator A: the likelihood of y
  given x_t is approximated through Tweedie's x̂₀(x_t), and its gradient is added to the score,

      s̃(x, t) = s_θ(x, t) − ζ ∇_x ‖y − A(x̂₀(x, t))‖                 (``noise_std`` = None),
      s̃(x, t) = s_θ(x, t) − ζ ∇_x ‖y − A(x̂₀(x, t))‖² / (2 σ_y²)      (Gaussian noise of std σ_y),

  the gradient taken by autograd through the model (ζ = 1 in the Gaussian form is the plain DPS likelihood).

Example operators A: :class:`MaskOperator`, :class:`AveragePool` (2× downsampling) and :class:`GaussianBlur`.
Every method wraps existing pieces: :class:`Inpaint` is a sampler around any fixed-step sampler's step rule,
:class:`DiffusionPosteriorSampling` a :class:`~sde_diffusion.model.ScoreModel` every sampler takes.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_finite, positive, positive_int
from .guidance import _GuidedModel
from .model import Prediction, ScoreModel
from .samplers.base import FixedStepSampler, Interval, Sampler, SamplingContext, intervals, snapshot_state
from .samplers.predictor_corrector import PredictorCorrector, langevin_step

__all__ = ["Inpaint", "DiffusionPosteriorSampling", "MaskOperator", "AveragePool", "GaussianBlur"]

Operator = Callable[[Tensor], Tensor]


def _checked_mask(mask: Tensor) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a tensor (True / 1 where the coordinate is observed), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        if mask.is_complex() or not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must be boolean, or hold only 0 and 1 (1 = observed)")
        mask = mask != 0
    return mask


class Inpaint(Sampler):
    """Sample x given x = ``observed`` on ``mask`` by replacement (``resample`` = 0) or RePaint (``resample`` = r > 0,
    re-noising by ``jump_length`` steps at a time).

    ``sampler`` is any :class:`~sde_diffusion.samplers.base.FixedStepSampler`; its grid, step rule and final
    denoise are used unchanged. ``mask`` (bool, True = known) and ``observed`` must broadcast to the sample
    shape, e.g. (D,) for one observation shared by the batch or (B, D) per sample. Each replacement draws one
    ``torch.randn(x.shape, generator)``; so does each re-noising. The returned samples equal ``observed``
    exactly on the mask. NFE per grid step: the inner rule's, times (1 + ``resample``). Resampling redoes a
    block of ``jump_length`` steps (the last block may be shorter) from its first time: a multistep rule's
    history (DPM-Solver++, UniPC) is restored before each redo, so its older entries come from the
    trajectory before re-noising.
    """

    name = "inpaint"

    def __init__(self, sampler: FixedStepSampler, mask: Tensor, observed: Tensor, resample: int = 0,
                 jump_length: int = 1):
        if not isinstance(sampler, FixedStepSampler):
            raise TypeError(f"sampler must be a FixedStepSampler (a grid and a step rule), got {type(sampler).__name__}")
        mask = _checked_mask(mask)
        if not isinstance(observed, Tensor) or not observed.is_floating_point():
            raise TypeError("observed must be a floating-point tensor (the known values y0)")
        check_finite(observed, "observed")
        try:
            torch.broadcast_shapes(mask.shape, observed.shape)
        except RuntimeError:
            raise ValueError(f"mask {tuple(mask.shape)} and observed {tuple(observed.shape)} "
                             "must broadcast together") from None
        if isinstance(resample, bool) or int(resample) != resample or resample < 0:
            raise ValueError(f"resample must be a non-negative integer (RePaint's resampling count), got {resample!r}")
        self.sampler = sampler
        self.mask = mask
        self.observed = observed
        self.resample = int(resample)
        self.jump_length = positive_int(jump_length, "jump_length")
        self.thresholding = sampler.thresholding

    def _run(self, ctx: SamplingContext, x: Tensor):
        try:
            fits = torch.broadcast_shapes(self.mask.shape, self.observed.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"mask {tuple(self.mask.shape)} and observed {tuple(self.observed.shape)} must broadcast "
                             f"to the sample shape {tuple(x.shape)}")
        mask = self.mask.to(x.device).expand_as(x)
        y0 = self.observed.to(device=x.device, dtype=x.dtype).expand_as(x)
        ts = self.sampler.times(ctx.sde)
        ctx.state["steps"] = len(ts) - 1
        steps = intervals(ctx.sde, ts)
        ctx.remember_schedule(steps)
        for first in range(0, len(steps), self.jump_length):
            block = steps[first:first + self.jump_length]
            before = snapshot_state(ctx.state)  # a redone block must find a multistep rule's history as it was
            alpha, std = (float(v) for v in ctx.sde.transition(block[-1].s, block[0].t))
            for redo in range(self.resample + 1):
                if redo:
                    x = alpha * x + std * ctx.noise(x)  # x_t | x_s for the block's first t and last s
                    ctx.state.clear()
                    ctx.state.update(snapshot_state(before))
                for iv in block:
                    x = self._step(ctx, x, iv, mask, y0)
                    if redo == self.resample:
                        ctx.visit(x, iv.i, iv.t, iv.s)
        if self.sampler.denoise:
            x = ctx.x0(x, float(ts[-1]))
            ts = torch.cat([ts, ts.new_zeros(1)])
        x = torch.where(mask, y0, x)
        if self.sampler.denoise:
            ctx.visit(x, len(ts) - 2, float(ts[-2]), 0.0)
        return x, ts

    def _step(self, ctx: SamplingContext, x: Tensor, iv: Interval, mask: Tensor, y0: Tensor) -> Tensor:
        inner = self.sampler
        if isinstance(inner, PredictorCorrector):
            for _ in range(inner.corrector_steps):
                x = _replace(ctx, langevin_step(ctx, x, iv, inner.snr), mask, y0, iv.alpha_t, iv.sigma_t)
            x = inner._predict(ctx, x, iv)
        else:
            x = inner.step(ctx, x, iv)
        return _replace(ctx, x, mask, y0, iv.alpha_s, iv.sigma_s)

    def __repr__(self) -> str:
        return (f"Inpaint(sampler={self.sampler!r}, mask={tuple(self.mask.shape)}, observed={tuple(self.observed.shape)}, "
                f"resample={self.resample}, jump_length={self.jump_length})")


def _replace(ctx: SamplingContext, x: Tensor, mask: Tensor, y0: Tensor, alpha: float, sigma: float) -> Tensor:
    """x on the unknown coordinates, α y₀ + σ z on the known ones."""
    return torch.where(mask, alpha * y0 + sigma * ctx.noise(x), x)


class DiffusionPosteriorSampling(_GuidedModel):
    """DPS (Chung et al. 2023): s̃ = s_θ − ``scale``·∇_x ‖y − A(x̂₀)‖ (or ‖·‖²/(2σ_y²) with ``noise_std`` = σ_y).

    ``operator`` A maps a batch of x̂₀ to a batch of measurements, differentiably (a mask, a downsampling, a
    blur, a network); ``measurement`` y must have the shape of A(x̂₀) or broadcast to it. The norm is per
    sample. The gradient flows through the inner model's x̂₀(x) — exact DPS with a differentiable network;
    a model whose score is detached from x gets ∂x̂₀/∂x = I/α instead. ``scale`` = 0 is the unconditional model.
    """

    def __init__(self, model: ScoreModel, operator: Operator, measurement: Tensor, scale: float = 1.0,
                 noise_std: Optional[float] = None):
        super().__init__(model, scale, prediction="score")
        if not callable(operator):
            raise TypeError(f"operator must be callable A(x) -> measurement, got {type(operator).__name__}")
        if not isinstance(measurement, Tensor) or not measurement.is_floating_point():
            raise TypeError("measurement must be a floating-point tensor y")
        check_finite(measurement, "measurement")
        if self.scale < 0:
            raise ValueError(f"scale must be non-negative (the guidance step ζ), got {scale}")
        self.operator = operator
        self.measurement = measurement
        self.noise_std = None if noise_std is None else positive(noise_std, "noise_std")

    def _predict(self, x: Tensor, t: Union[float, Tensor], model_kwargs: Optional[Dict[str, Any]] = None,
                 alpha: Optional[float] = None, sigma: Optional[float] = None) -> Prediction:
        alpha, sigma = self._alpha_sigma_or(x, t, alpha, sigma)
        if self.scale == 0:
            return Prediction(x, alpha, sigma, score=self.model._predict(x, t, model_kwargs, alpha, sigma).score)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            pred = self.model._predict(x_in, t, model_kwargs, alpha, sigma)
            grad = torch.autograd.grad(self.data_misfit(pred.x0).sum(), x_in)[0]
        return Prediction(x, alpha, sigma, score=pred.score.detach() - self.scale * grad.to(x.dtype))

    def data_misfit(self, x0: Tensor) -> Tensor:
        """Per-sample ‖y − A(x₀)‖, or ‖y − A(x₀)‖²/(2σ_y²) with ``noise_std``; shape (batch,)."""
        ax = self.operator(x0)
        if not isinstance(ax, Tensor) or ax.dim() == 0 or ax.shape[0] != x0.shape[0]:
            shape = tuple(ax.shape) if isinstance(ax, Tensor) else type(ax).__name__
            raise ValueError(f"operator must return a batch of measurements (first dim {x0.shape[0]}), got {shape}")
        y = self.measurement.to(device=ax.device, dtype=ax.dtype)
        try:
            torch.broadcast_shapes(y.shape, ax.shape)
        except RuntimeError:
            raise ValueError(f"measurement has shape {tuple(y.shape)} "
                             f"but the operator gives {tuple(ax.shape)}") from None
        sq = (y - ax).pow(2).reshape(ax.shape[0], -1).sum(1)
        if self.noise_std is not None:
            return sq / (2 * self.noise_std**2)
        return sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt()

    def with_net(self, net) -> "DiffusionPosteriorSampling":
        """The same guidance around the inner model with another network."""
        return DiffusionPosteriorSampling(self.model.with_net(net), self.operator, self.measurement, self.scale,
                                          self.noise_std)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, noise_std={self.noise_std}, operator={self.operator!r}"


# ----- example linear operators A -----
class MaskOperator:
    """A(x) = m ⊙ x: keep the observed coordinates, zero the rest (inpainting, imputation)."""

    def __init__(self, mask: Tensor):
        self.mask = _checked_mask(mask)

    def __call__(self, x: Tensor) -> Tensor:
        return x * self.mask.to(device=x.device, dtype=x.dtype)

    def __repr__(self) -> str:
        return f"MaskOperator(mask={tuple(self.mask.shape)}, observed={int(self.mask.sum())})"


def _images(x: Tensor, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who} takes images of shape (B, C, H, W), got {shape}")


class AveragePool:
    """A(x) = mean over ``factor`` × ``factor`` blocks: (B, C, H, W) → (B, C, H/factor, W/factor) (super-resolution)."""

    def __init__(self, factor: int = 2):
        self.factor = positive_int(factor, "factor")

    def __call__(self, x: Tensor) -> Tensor:
        _images(x, "AveragePool")
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"AveragePool(factor={self.factor}) needs H and W divisible by {self.factor}, "
                             f"got {tuple(x.shape[-2:])}")
        return F.avg_pool2d(x, self.factor)

    def __repr__(self) -> str:
        return f"AveragePool(factor={self.factor})"


class GaussianBlur:
    """A(x) = k ∗ x with the separable normalised kernel k_i ∝ exp(−i²/(2 std²)), |i| ≤ kernel_size//2, per
    channel, reflect padding (shape kept; deblurring)."""

    def __init__(self, kernel_size: int = 5, std: float = 1.0):
        kernel_size = positive_int(kernel_size, "kernel_size")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size, self.std = kernel_size, positive(std, "std")
        offsets = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
        weights = torch.exp(-offsets**2 / (2 * self.std**2))
        self.kernel_1d = weights / weights.sum()

    def __call__(self, x: Tensor) -> Tensor:
        _images(x, "GaussianBlur")
        half, channels = self.kernel_size // 2, x.shape[1]
        if half >= min(x.shape[-2:]):
            raise ValueError(f"GaussianBlur(kernel_size={self.kernel_size}) needs H and W above {half}, "
                             f"got {tuple(x.shape[-2:])}")
        k = self.kernel_1d.to(device=x.device, dtype=x.dtype)
        x = F.pad(x, (half, half, half, half), mode="reflect")
        x = F.conv2d(x, k.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        return F.conv2d(x, k.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)

    def __repr__(self) -> str:
        return f"GaussianBlur(kernel_size={self.kernel_size}, std={self.std:g})"
