"""Checkpoints that never execute code on load.

A run directory holds ``checkpoint-<step>/`` folders (the newest ``keep`` are kept), each with

    config.json          the RunConfig: SDE spec, network config, prediction, data, training settings
    model.safetensors    the network's weights
    ema.safetensors      their exponential moving average (what sampling uses)
    state.pt             optimizer, step, EMA count and RNG states, read with torch.load(weights_only=True)

A checkpoint is written into a hidden temporary folder and renamed into place in one step, so a
process killed at any moment leaves either the previous checkpoints or the new one complete, never
half of one. safetensors files hold tensors only, and ``weights_only=True`` refuses every pickled
object that is not a tensor or a plain container: a file replaced by a malicious pickle is refused
with :class:`CheckpointError` and its code is not run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import Tensor

from ..model import ScoreModel
from .config import MODEL_KINDS, RunConfig, build_sde

#: why a checkpoint of one kind cannot stand in for the other, keyed by the kind that was expected
_WRONG_KIND = {"score": "holds a noise-conditional classifier (from `sde-diffusion train-classifier`), not a score model: "
                        "pass it as `sample --classifier`, or load it with load_classifier",
               "classifier": "holds a score model (from `sde-diffusion train`), not a classifier: train one with "
                             "`sde-diffusion train-classifier --like RUN`"}

PathLike = Union[str, os.PathLike]
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unsafe; the message says which file and why, in one line."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns; ``model`` carries the EMA weights unless asked otherwise."""

    path: Path
    step: int
    config: RunConfig
    model: ScoreModel
    net_state: Dict[str, Tensor]
    ema_state: Dict[str, Tensor]
    state: Optional[Dict[str, Any]] = None


def checkpoints(run_dir: PathLike) -> List[Path]:
    """The complete checkpoint folders of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: PathLike, step: int, config: RunConfig, net_state: Dict[str, Tensor],
                    ema_state: Dict[str, Tensor], state: Dict[str, Any], keep: int = 2) -> Path:
    """Write ``run_dir/checkpoint-<step>`` atomically and delete all but the newest ``keep`` checkpoints."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"checkpoint-{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=run_dir))
    try:
        (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
        save_file(_cpu(net_state), str(tmp / "model.safetensors"))
        save_file(_cpu(ema_state), str(tmp / "ema.safetensors"))
        torch.save({**state, "step": int(step)}, tmp / "state.pt")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)
        if final.exists():  # re-written after a resume: swap the old one out first
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_temporaries(run_dir: PathLike) -> None:
    """Delete half-written checkpoint folders left by a killed process."""
    for p in Path(run_dir).glob(".tmp-checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)


def resolve(path: PathLike) -> Path:
    """A checkpoint folder itself, or the newest checkpoint of a run directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path does not exist: {path}")
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    found = checkpoints(path)
    if not found:
        raise CheckpointError(f"no checkpoint in {path} (expected checkpoint-<step>/ folders with config.json and model.safetensors)")
    return found[-1]


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu", weights: str = "ema",
                    training_state: bool = False, kind: str = "score") -> Checkpoint:
    """Rebuild the model of a checkpoint (``weights`` "ema" or "model"); ``training_state`` also reads state.pt.

    ``kind`` is what the checkpoint must hold: "score" (``model`` is a ScoreModel) or "classifier" (``model`` is
    a :class:`~sde_diffusion.training.classifier.NoisyClassifier`); a checkpoint of the other kind is refused.
    """
    from ..nets import build

    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    folder = resolve(path)
    try:
        config = RunConfig.from_dict(json.loads((folder / "config.json").read_text()))
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{folder / 'config.json'} is not a valid run config: {err}") from None
    if config.model.kind != kind:
        raise CheckpointError(f"{folder} {_WRONG_KIND[kind]}")
    net_state = _read_safetensors(folder / "model.safetensors")
    ema_state = _read_safetensors(folder / "ema.safetensors")
    state = read_state(folder / "state.pt") if training_state else None
    try:
        net = build(config.model.net)
        net.load_state_dict(ema_state if weights == "ema" else net_state)
    except (ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"{folder}: the weights do not fit the network in config.json: {str(err).splitlines()[0]}") from None
    model = build_model(config, net).to(device)
    step = int(state["step"]) if state else int(folder.name.split("-")[1])
    return Checkpoint(folder, step, config, model.eval(), net_state, ema_state, state)


def build_model(config: RunConfig, net: torch.nn.Module) -> ScoreModel:
    """The ScoreModel of a run config around ``net`` (a NoisyClassifier for a classifier's config)."""
    if config.model.kind == "classifier":
        from .classifier import NoisyClassifier  # which imports the loop, which imports this module

        return NoisyClassifier(net, build_sde(config.model.sde))
    return ScoreModel(net, build_sde(config.model.sde), prediction=config.model.prediction, sigma_data=config.model.sigma_data)


def read_state(path: Path) -> Dict[str, Any]:
    """state.pt through ``torch.load(weights_only=True)``: tensors and plain containers only, never code."""
    if not path.is_file():
        raise CheckpointError(f"missing {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for foreign objects, RuntimeError/EOFError for damaged files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"refusing to load {path}: not a weights-only file ({first})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} does not hold a training state (expected a dict with 'step')")
    return state


def _read_safetensors(path: Path) -> Dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"missing {path}")
    try:
        return load_file(str(path))
    except Exception as err:  # a pickle or any other bytes in place of a safetensors file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"refusing to load {path}: not a safetensors file ({first})") from None


def _cpu(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
