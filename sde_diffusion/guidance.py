"""Guidance: conditional sampling by steering a score model with a label ``y`` (in ``model_kwargs["y"]``).

* Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"): one network trained
  with and without the label (the "null" label ∅) gives ε_c = ε(x, t, y) and ε_u = ε(x, t, ∅), and

      ε̃ = ε_u + w (ε_c − ε_u),   i.e.   s̃ = w ∇log p_t(x | y) + (1 − w) ∇log p_t(x)

  (diffusers' convention: w = 1 is the conditional model, w = 0 the unconditional one). The score is that of
  the tilted density p_t(x | y)^w p_t(x)^{1−w}. An optional guidance interval (Kynkäänniemi et al. 2024,
  "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality") applies it only for
  t ∈ [t_lo, t_hi] and uses the conditional ε elsewhere.
* Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", eq. 10–12;
  Song et al. 2021, §5): with a noise-aware classifier p_φ(y | x_t, t),

      s̃ = s_θ(x, t) + w ∇_x log p_φ(y | x_t, t),   ε̃ = −σ(t) s̃.

  By Bayes, ∇log p_t(x | y) = ∇log p_t(x) + ∇log p_t(y | x), so w = 1 with the exact classifier is the exact
  conditional score.

Both wrappers are :class:`~sde_diffusion.model.ScoreModel` s: every sampler takes them unchanged, and any
x̂_0 thresholding acts on the x̂_0 implied by the guided ε.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .model import Prediction, ScoreModel

__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance"]

Classifier = Callable[..., Tensor]


class _GuidedModel(ScoreModel):
    """Shared plumbing: a ScoreModel around an inner ScoreModel (same SDE), evaluated through ``_predict``."""

    def __init__(self, model: ScoreModel, scale: float, prediction: str):
        nn.Module.__init__(self)
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be a sde_diffusion.ScoreModel, got {type(model).__name__}")
        self.model = model
        self.sde = model.sde
        self.prediction = prediction
        self.time_input = model.time_input
        self.sigma_data = model.sigma_data
        self.scale = _finite(scale, "scale")

    @property
    def net(self) -> nn.Module:  # type: ignore[override]
        """The inner model's network (its parameters are this model's parameters)."""
        return self.model.net

    def forward(self, x: Tensor, t, **model_kwargs: Any) -> Tensor:
        """The guided ε (ClassifierFreeGuidance) or guided score (ClassifierGuidance), per ``prediction``."""
        pred = self.predict(x, t, **model_kwargs)
        return pred.eps if self.prediction == "eps" else pred.score

    def _alpha_sigma_or(self, x: Tensor, t, alpha, sigma):
        if alpha is None or sigma is None:
            return self._alpha_sigma(x, t)
        return alpha, sigma


class ClassifierFreeGuidance(_GuidedModel):
    """ε̃ = ε_u + scale·(ε_c − ε_u) from one model that knows the ``null_label`` (Ho & Salimans 2022).

    ``scale`` = 1 is the conditional model, 0 the unconditional one, > 1 sharpens towards the tilted density
    p_t(x | y)^w p_t(x)^{1−w}. The conditional and unconditional ε are computed in ONE batched call of the
    inner model on ``cat([x, x])`` with labels ``cat([y, null])`` (tensor kwargs whose first dimension is the
    batch are repeated too), so one evaluation of the guided model — one NFE as samplers count it — costs
    one inner call on twice the batch.

    ``interval=(t_lo, t_hi)``: guidance only where t ∈ [t_lo, t_hi]; elsewhere the conditional ε
    (Kynkäänniemi et al. 2024). The bounds are times of the SDE; an interval given in noise levels σ̃ = σ/α
    maps to times through ``sde.t_of_log_snr(−log σ̃)``. Where no sample of the batch is inside, only the
    conditional batch is run.
    """

    def __init__(self, model: ScoreModel, scale: float, null_label: int,
                 interval: Optional[Tuple[float, float]] = None):
        super().__init__(model, scale, prediction="eps")
        try:
            label = operator.index(null_label)
        except TypeError:
            label = -1
        if isinstance(null_label, bool) or label < 0:
            raise ValueError(f"null_label must be a non-negative integer (the label meaning 'no class'), got {null_label!r}")
        self.null_label = label
        self.interval = None if interval is None else _checked_interval(interval, self.sde.T)

    def with_net(self, net: nn.Module) -> "ClassifierFreeGuidance":
        """The same guidance around the inner model with another network (its EMA copy, its compiled wrapper)."""
        return ClassifierFreeGuidance(self.model.with_net(net), self.scale, self.null_label, self.interval)

    def _predict(self, x: Tensor, t: Union[float, Tensor], model_kwargs: Optional[Dict[str, Any]] = None,
                 alpha: Optional[float] = None, sigma: Optional[float] = None) -> Prediction:
        kwargs = dict(model_kwargs or {})
        y = _labels(kwargs, x)
        alpha, sigma = self._alpha_sigma_or(x, t, alpha, sigma)
        guided = self._guided_rows(x, t)
        if guided is not None and not bool(guided.any()):
            return Prediction(x, alpha, sigma, eps=self.model._predict(x, t, kwargs, alpha, sigma).eps)
        batch = x.shape[0]
        both = {k: _repeat_batch(v, batch) for k, v in kwargs.items() if k != "y"}
        both["y"] = torch.cat([y, torch.full_like(y, self.null_label)])
        t_both = torch.cat([t, t]) if isinstance(t, Tensor) and t.dim() == 1 else t
        eps_c, eps_u = self.model._predict(torch.cat([x, x]), t_both, both).eps.chunk(2)
        eps = eps_u + self.scale * (eps_c - eps_u)
        if guided is not None:
            eps = torch.where(guided.reshape(-1, *([1] * (x.dim() - 1))).to(x.device), eps, eps_c)
        return Prediction(x, alpha, sigma, eps=eps)

    def _guided_rows(self, x: Tensor, t: Union[float, Tensor]) -> Optional[Tensor]:
        """Which rows get guidance: None (all, no interval) or a bool tensor of shape (batch,)."""
        if self.interval is None:
            return None
        t_lo, t_hi = self.interval
        t64 = torch.as_tensor(t, dtype=torch.float64).cpu()
        inside = (t64 >= t_lo) & (t64 <= t_hi)
        return inside.expand(x.shape[0]) if inside.dim() == 0 else inside

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, null_label={self.null_label}, interval={self.interval}"


class ClassifierGuidance(_GuidedModel):
    """s̃ = s_θ(x, t) + scale·∇_x log p_φ(y | x_t, t) (Dhariwal & Nichol 2021); ε̃ = −σ(t) s̃.

    ``classifier(x, t, **kwargs) -> logits`` of shape (batch, K) is called with continuous t of shape (batch,)
    and the model kwargs other than ``y``; the label ``y`` (``model_kwargs["y"]``) picks the log-softmax
    entry whose gradient is taken. The inner ``model`` is the unconditional one and is likewise called
    without ``y``. The gradient is computed here under ``torch.enable_grad()`` on a detached x, so it works
    inside samplers (which run under ``torch.no_grad``); ``scale`` = 0 skips the classifier.
    """

    def __init__(self, model: ScoreModel, classifier: Classifier, scale: float = 1.0):
        super().__init__(model, scale, prediction="score")
        if not callable(classifier):
            raise TypeError(f"classifier must be callable classifier(x, t, **kwargs) -> logits, got {type(classifier).__name__}")
        self.classifier = classifier

    def with_net(self, net: nn.Module) -> "ClassifierGuidance":
        """The same guidance around the inner model with another network."""
        return ClassifierGuidance(self.model.with_net(net), self.classifier, self.scale)

    def _predict(self, x: Tensor, t: Union[float, Tensor], model_kwargs: Optional[Dict[str, Any]] = None,
                 alpha: Optional[float] = None, sigma: Optional[float] = None) -> Prediction:
        kwargs = dict(model_kwargs or {})
        y = _labels(kwargs, x)
        del kwargs["y"]
        alpha, sigma = self._alpha_sigma_or(x, t, alpha, sigma)
        score = self.model._predict(x, t, kwargs, alpha, sigma).score
        if self.scale != 0:
            score = score + self.scale * self.log_prob_grad(x, t, y, kwargs)
        return Prediction(x, alpha, sigma, score=score)

    def log_prob_grad(self, x: Tensor, t: Union[float, Tensor], y: Tensor, kwargs: Dict[str, Any]) -> Tensor:
        """∇_x log p_φ(y | x, t) = ∇_x log_softmax(classifier(x, t))[y]."""
        t64 = torch.as_tensor(t, dtype=torch.float64)
        t_net = (t64.expand(x.shape[0]) if t64.dim() == 0 else t64).to(device=x.device, dtype=x.dtype)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = self.classifier(x_in, t_net, **kwargs)
            if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(f"classifier must return logits of shape (batch={x.shape[0]}, K), got {shape}")
            if int(y.max()) >= logits.shape[1]:
                raise ValueError(f'model_kwargs["y"] has label {int(y.max())} but the classifier gives {logits.shape[1]} classes')
            log_p = torch.log_softmax(logits, dim=1).gather(1, y.to(logits.device).reshape(-1, 1)).sum()
            (grad,) = torch.autograd.grad(log_p, x_in)
        return grad.to(x.dtype)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, classifier={type(self.classifier).__name__}"


def _finite(value: float, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _checked_interval(interval: Tuple[float, float], T: float) -> Tuple[float, float]:
    try:
        t_lo, t_hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a pair (t_lo, t_hi) of times, got {interval!r}") from None
    if not (math.isfinite(t_lo) and math.isfinite(t_hi) and 0 <= t_lo <= t_hi):
        raise ValueError(f"interval must satisfy 0 <= t_lo <= t_hi (finite), got {interval!r}")
    if t_lo > T:
        raise ValueError(f"interval {interval!r} starts after the SDE's horizon T={T}: guidance would never apply")
    return t_lo, t_hi


def _labels(kwargs: Dict[str, Any], x: Tensor) -> Tensor:
    if "y" not in kwargs or kwargs["y"] is None:
        raise ValueError('guidance needs the labels: pass model_kwargs["y"], an int64 tensor of shape (batch,)')
    y = kwargs["y"]
    if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f'model_kwargs["y"] must be an integer tensor of shape (batch,), got {type(y).__name__}'
                        f"{'' if not isinstance(y, Tensor) else ' of dtype ' + str(y.dtype)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f'model_kwargs["y"] must have shape ({x.shape[0]},), got {tuple(y.shape)}')
    if (y < 0).any():
        raise ValueError('model_kwargs["y"] must be non-negative class indices')
    return y


def _repeat_batch(value: Any, batch: int) -> Any:
    """A kwarg for the doubled batch: tensors with a leading batch dimension are repeated, others passed as is."""
    if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == batch:
        return torch.cat([value, value])
    return value
