"""Input validation shared by the whole package: every bad input names the argument."""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

TimeLike = Union[float, int, Tensor]


def as_float64_time(t: TimeLike, name: str = "t") -> Tensor:
    """``t`` as a float64 tensor (0-d or 1-d); rejects NaN/Inf and higher ranks."""
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a float or a tensor, got bool")
    t64 = torch.as_tensor(t, dtype=torch.float64)
    if t64.dim() > 1:
        raise ValueError(f"{name} must be a scalar or a 1-d tensor of shape (batch,), got shape {tuple(t64.shape)}")
    if not torch.isfinite(t64).all():
        raise ValueError(f"{name} contains NaN or Inf: {t64}")
    return t64


def check_finite(x: Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")


def checked_samples(x: Tensor, name: str) -> Tensor:
    """``x`` must be a finite floating-point batch (batch ≥ 1, at least one value per sample); returned unchanged."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of shape (batch, ...), got "
                        f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{name} must have shape (batch, ...) with batch ≥ 1 and at least one dimension per sample, "
                         f"got {tuple(x.shape)}")
    check_finite(x, name)
    return x


def check_batch(t: Tensor, x: Tensor, t_name: str = "t", x_name: str = "x") -> None:
    """``t`` must be a scalar or have one entry per row of ``x``."""
    if t.dim() == 1 and (x.dim() == 0 or t.shape[0] != x.shape[0]):
        raise ValueError(
            f"{t_name} has shape {tuple(t.shape)} but {x_name} has shape {tuple(x.shape)}: "
            f"{t_name} must be a scalar or of shape ({x.shape[0] if x.dim() else 1},)"
        )


def per_sample(coef: Tensor, x: Tensor) -> Tensor:
    """Broadcast a scalar or (batch,) coefficient over the trailing dims of ``x``, in x's dtype."""
    coef = coef.to(device=x.device, dtype=x.dtype)
    if coef.dim() == 1:
        coef = coef.reshape(-1, *([1] * (x.dim() - 1)))
    return coef


def positive(value: float, name: str) -> float:
    value = float(value)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def horizon(T: float, eps: float) -> tuple:
    """Validated (T, eps) of a forward process: both positive, eps < T."""
    T, eps = positive(T, "T"), positive(eps, "eps")
    if eps >= T:
        raise ValueError(f"eps must be smaller than T={T}, got {eps}")
    return T, eps
