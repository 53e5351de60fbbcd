"""Run configuration: plain dataclasses, saved as JSON with every checkpoint and loadable from JSON or TOML.

A :class:`RunConfig` holds everything needed to rebuild the model (SDE, network config, prediction)
and to continue training (the :class:`TrainConfig`). ``sde_spec``/``build_sde`` turn an SDE into a
JSON dict and back; SDEs made from Python functions (``LinearSDE.from_coefficients``) have no such
spec and cannot be checkpointed.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type

from ..sde import CosineVPSDE, DiscreteVPSDE, LearnedVPSDE, LinearSDE, SubVPSDE, VESDE, VPSDE

#: SDE names of the CLI and of checkpoints
SDES: Dict[str, Type[LinearSDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "cosine": CosineVPSDE, "ddpm": DiscreteVPSDE,
                                    "learned": LearnedVPSDE}


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one training run (defaults: score_sde / EDM practice, sized for CPU)."""

    steps: int = 2000
    batch_size: int = 128  #: per optimizer step, summed over processes and accumulation micro-batches
    lr: float = 2e-4
    warmup: int = 200  #: linear learning-rate warm-up over this many steps
    weight_decay: float = 0.0
    adam_betas: Tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  #: max global gradient norm (0 disables clipping)
    ema_decay: float = 0.999  #: EMA decay, ramped as min(decay, (1 + n)/(10 + n))
    accumulate: int = 1  #: micro-batches per optimizer step
    weighting: str = "eps"  #: dsm_loss weighting
    t_sampling: str = "stratified"  #: "uniform" or "stratified"
    label_dropout: float = 0.1  #: conditional nets: probability of the null label in training
    seed: int = 0
    device: str = "cpu"
    bf16: bool = True  #: bf16 autocast (CUDA only; CPU trains in fp32)
    compile: bool = False  #: torch.compile the network
    channels_last: bool = True  #: images in channels_last memory format
    log_every: int = 50
    checkpoint_every: int = 500  #: 0 writes only the final checkpoint
    keep: int = 2  #: checkpoints kept (the newest)
    sample_every: int = 0  #: write a sample grid every this many steps (0: only at the end)
    sampler: str = "dpm_solver"  #: sampler of the periodic sample grids
    sample_steps: int = 20
    sample_n: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        for name in ("steps", "batch_size", "accumulate", "log_every", "sample_n", "sample_steps", "keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup", "checkpoint_every", "sample_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError(f"grad_clip and weight_decay must be >= 0, got {self.grad_clip}, {self.weight_decay}")
        if self.batch_size % self.accumulate:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by accumulate ({self.accumulate})")


#: what a checkpoint holds: a score model or a noise-conditional classifier
MODEL_KINDS = ("score", "classifier")


@dataclass
class ModelConfig:
    """What rebuilds a :class:`~sde_diffusion.ScoreModel`: SDE spec, network config, parametrization, data shape.

    ``kind`` "classifier" marks a noise-conditional classifier (``sde-diffusion train-classifier``; its
    ``num_classes`` is the number of logits) instead of a score model.
    """

    sde: Dict[str, Any] = field(default_factory=lambda: {"name": "vp"})
    net: Dict[str, Any] = field(default_factory=dict)
    prediction: str = "eps"
    sigma_data: float = 0.5
    data_shape: List[int] = field(default_factory=list)
    num_classes: Optional[int] = None
    kind: str = "score"

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")


@dataclass
class RunConfig:
    """A whole run: the data source, the model and the training settings."""

    data: str = "digits"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunConfig":
        unknown = set(d) - {"data", "model", "train"}
        if unknown:
            raise ValueError(f"config has unknown sections {sorted(unknown)}; expected data, model, train")
        return cls(data=d.get("data", "digits"), model=_dataclass_from(ModelConfig, d.get("model", {}), "model"),
                   train=_dataclass_from(TrainConfig, d.get("train", {}), "train"))


def _dataclass_from(cls: type, values: Dict[str, Any], section: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"config section [{section}] has unknown keys {sorted(unknown)}; valid keys: {sorted(names)}")
    return cls(**values)


def read_config_file(path: str) -> Dict[str, Any]:
    """A JSON (``.json``) or TOML (``.toml``) file as a dict; sections ``data``, ``model``, ``train``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if p.suffix == ".json":
        return json.loads(p.read_text())
    if p.suffix == ".toml":
        import tomllib

        return tomllib.loads(p.read_text())
    raise ValueError(f"config must be a .json or .toml file, got {path}")


def sde_spec(sde: LinearSDE) -> Dict[str, Any]:
    """A JSON dict that :func:`build_sde` turns back into an equal SDE."""
    for name, cls in SDES.items():
        if type(sde) is cls:
            if name == "ddpm":
                return {"name": name, "betas": sde.betas.tolist()}
            if name == "learned":  # the schedule's current weights: refresh the spec whenever it has trained
                return sde.spec()
            return {"name": name, **{k: v for k, v in vars(sde).items() if not k.startswith("_")}}
    raise ValueError(
        f"sde of type {type(sde).__name__} cannot be saved in a checkpoint; use one of {sorted(SDES)} "
        "(an SDE built from Python functions has no JSON form)")


def build_sde(spec: Dict[str, Any]) -> LinearSDE:
    """The SDE of a spec ``{"name": "vp", **constructor kwargs}``; ``ddpm`` takes ``betas`` or ``linear`` kwargs,
    ``learned`` T, eps, width and the schedule's ``weights`` (none: a fresh schedule)."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in SDES:
        raise ValueError(f"sde name must be one of {sorted(SDES)}, got {name!r}")
    if name == "ddpm":
        return DiscreteVPSDE(spec["betas"]) if "betas" in spec else DiscreteVPSDE.linear(**spec)
    if name == "learned":
        return LearnedVPSDE.from_spec(spec)
    try:
        return SDES[name](**spec)
    except TypeError as err:
        raise ValueError(f"bad arguments for sde {name!r}: {err}") from None
