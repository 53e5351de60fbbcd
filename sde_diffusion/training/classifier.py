"""Noise-conditional classifiers p_φ(y | x_t, t) for classifier guidance, trained by the one training loop.

Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image Synthesis", §4) and Song et al. 2021 (§5, App. I)
train the classifier on data noised by the forward process, by cross-entropy:

    L(φ) = E_{(x_0, y), t, ε} [ −log softmax(f_φ(x_t, t))_y ],    x_t = α(t) x_0 + σ(t) ε,

with t and ε drawn exactly as :func:`~sde_diffusion.losses.dsm_loss` draws them for the "eps" weighting
(uniform or stratified t on [eps, T]; the step grid of a discrete-time SDE). At every t the minimiser is the
true noisy posterior p_t(y | x_t), whose x-gradient is what :class:`~sde_diffusion.guidance.ClassifierGuidance`
adds to the score: ∇log p_t(x | y) = ∇log p_t(x) + ∇log p_t(y | x).

A classifier guides only models of the SDE it was trained on: its checkpoint records that SDE
(``ModelConfig.kind = "classifier"``), and ``sde-diffusion sample --classifier`` checks it against the model's.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import T_SAMPLINGS, _uniform_times, _unit_draws
from ..sde import LinearSDE, randn
from .checkpoint import PathLike, load_checkpoint
from .config import RunConfig, TrainConfig
from .loop import Trainer


class NoisyClassifier(nn.Module):
    """A classifier network ``net(x, t) -> logits`` (B, K) and the SDE whose noised data it classifies.

    Callable as ``classifier(x, t)`` (what :class:`~sde_diffusion.guidance.ClassifierGuidance` calls); t is the
    continuous time of ``sde`` (shape (batch,)). ``with_net`` gives the same classifier around another network
    (its EMA copy, its DDP wrapper), as :meth:`ScoreModel.with_net` does for the training loop.
    """

    kind = "classifier"
    prediction = "logits"

    def __init__(self, net: nn.Module, sde: LinearSDE):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module net(x, t) -> logits, got {type(net).__name__}")
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a sde_diffusion.LinearSDE, got {type(sde).__name__}")
        self.net = net
        self.sde = sde

    @property
    def num_classes(self) -> int:
        """K, the number of logits (the network's ``num_classes``)."""
        inner = getattr(self.net, "module", self.net)  # through a DDP / compile wrapper
        return int(getattr(inner, "num_classes"))

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return self.net(x, t, **kwargs)

    def with_net(self, net: nn.Module) -> "NoisyClassifier":
        return NoisyClassifier(net, self.sde)


def classifier_loss(classifier: NoisyClassifier, x0: Tensor, y: Tensor, *, t_sampling: str = "uniform",
                    generator: Optional[torch.Generator] = None, t: Optional[Tensor] = None,
                    noise: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``classifier`` on x_t = α(t) x0 + σ(t) ε against the labels ``y`` (int64, (B,)).

    Randomness as in ``dsm_loss``: the time draw u first (``t_sampling`` "uniform" or "stratified"), then
    ``noise = randn(x0.shape, generator)``; an explicit ``t`` or ``noise`` replaces its draw. Returns the batch
    mean, or the (B,) per-sample values with ``reduction="none"``.
    """
    if not isinstance(classifier, NoisyClassifier):
        raise TypeError(f"classifier must be a NoisyClassifier(net, sde), got {type(classifier).__name__}")
    if t_sampling not in T_SAMPLINGS:
        raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {t_sampling!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2 or x0.shape[0] == 0:
        raise TypeError("x0 must be a floating-point tensor of shape (batch, ...), got "
                        + (f"{x0.dtype} of shape {tuple(x0.shape)}" if isinstance(x0, Tensor) else type(x0).__name__))
    if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.shape != x0.shape[:1]:
        raise TypeError(f"y must be an integer tensor of labels of shape ({x0.shape[0]},), got "
                        + (f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__))
    sde, batch = classifier.sde, x0.shape[0]
    t64 = _uniform_times(sde, _unit_draws(batch, t_sampling, generator), None) if t is None else sde._time(t, "t")
    t64 = t64.expand(batch) if t64.dim() == 0 else t64
    if noise is None:
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
    x_t = sde.perturb(x0, t64, noise)
    logits = classifier(x_t, t64.to(device=x0.device, dtype=x0.dtype))
    num_classes = logits.shape[1]
    if bool(((y < 0) | (y >= num_classes)).any()):
        raise ValueError(f"y must hold labels in [0, {num_classes - 1}] (the classifier has {num_classes} classes), "
                         f"got values in [{int(y.min())}, {int(y.max())}]")
    return F.cross_entropy(logits.float(), y.to(logits.device).long(), reduction=reduction)


class ClassifierTrainer(Trainer):
    """The training loop of :class:`Trainer` (AdamW, warm-up, clipping, EMA, checkpoints, DDP, exact resume)
    with :func:`classifier_loss` as the objective, on labelled ``data`` whose classes the classifier has.

    Labels are the targets here, never replaced by a null label (``label_dropout`` is not used); no sample
    grids are written. The checkpoints record ``kind = "classifier"``: :func:`load_classifier` reads them.
    """

    def __init__(self, classifier: NoisyClassifier, data, config: Optional[TrainConfig] = None, **kwargs: Any):
        if not isinstance(classifier, NoisyClassifier):
            raise TypeError(f"classifier must be a NoisyClassifier(net, sde), got {type(classifier).__name__}")
        if getattr(data, "y", None) is None:
            raise ValueError("training a classifier needs labelled data (a data set with labels y)")
        if data.num_classes != classifier.num_classes:
            raise ValueError(f"the classifier has {classifier.num_classes} classes but the data has {data.num_classes}")
        super().__init__(classifier, data, config, **kwargs)
        self.conditional = False  # the parent's label handling (dropout to a null label) is for conditional score nets
        self.run_config.model.num_classes = classifier.num_classes

    def _batch(self, step: int, micro: int) -> Tuple[Tensor, Dict[str, Any]]:
        x0, _ = super()._batch(step, micro)
        return x0, {"y": self.y[self._indices(step, micro)]}

    def loss(self, x0: Tensor, model_kwargs: Dict[str, Any]) -> Tensor:
        """Cross-entropy on noised data (:func:`classifier_loss`) with the configured ``t_sampling``."""
        return classifier_loss(self.train_model, x0, model_kwargs["y"], t_sampling=self.config.t_sampling,
                               generator=self.loss_generator)

    def write_samples(self) -> None:
        """A classifier draws no samples."""
        return None


def load_classifier(path: PathLike, device: Union[str, torch.device] = "cpu",
                    weights: str = "ema") -> Tuple[NoisyClassifier, LinearSDE, RunConfig]:
    """(classifier in eval mode, its SDE, its run config) from a ``train-classifier`` run or checkpoint folder.

    Like :func:`load_checkpoint`, nothing is unpickled; a score model's checkpoint raises :class:`CheckpointError`.
    """
    ckpt = load_checkpoint(path, device=device, weights=weights, kind="classifier")
    return ckpt.model, ckpt.model.sde, ckpt.config
