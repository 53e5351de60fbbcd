"""Drawing and saving samples of a trained model, in chunks whose noise does not depend on who draws them.

Sample j belongs to chunk k = j // batch_size, and chunk k draws everything from its own generator,
seeded by (seed, k). So the samples are the same whether one process draws every chunk or several
processes (``torchrun``) each draw a share of them, and whatever the order.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from . import samplers
from ._io import atomic_path
from .data import to_unit
from .model import ScoreModel


def make_sampler(name: str, steps: Optional[int] = None, **options: Any) -> samplers.Sampler:
    """``samplers.get(name, steps=steps, **options)``; ``steps`` is ignored by samplers that choose their own."""
    if name not in samplers.REGISTRY:
        raise ValueError(f"sampler must be one of {samplers.available()}, got {name!r}")
    params = inspect.signature(samplers.REGISTRY[name].__init__).parameters
    unknown = [k for k in options if k not in params]
    if unknown:
        valid = sorted(p for p in params if p != "self")
        raise ValueError(f"sampler {name!r} has no option(s) {unknown}; its options: {valid}")
    if steps is not None and "steps" in params:
        options["steps"] = steps
    return samplers.get(name, **options)


def chunk_seed(seed: int, k: int) -> int:
    return (int(seed) * 1_000_003 + int(k)) % (2**63)


def sample_chunk(model: ScoreModel, sampler: samplers.Sampler, k: int, size: int, shape: Sequence[int], seed: int,
                 device: Union[str, torch.device] = "cpu", labels: Optional[Tensor] = None, progress: bool = False) -> Tensor:
    """Chunk ``k`` of ``size`` samples, drawn with the generator of (seed, k); float32 on the CPU."""
    generator = torch.Generator(device).manual_seed(chunk_seed(seed, k))
    kwargs = {"y": labels.to(device)} if labels is not None else None
    out = sampler.sample(model, shape=(size, *shape), generator=generator, model_kwargs=kwargs, device=device, progress=progress)
    return out.x.float().cpu()


def chunks(n: int, batch_size: int) -> List[Tuple[int, int]]:
    """(chunk index, size) covering n samples."""
    return [(k, min(batch_size, n - k * batch_size)) for k in range((n + batch_size - 1) // batch_size)]


def draw_samples(model: ScoreModel, sampler: Union[str, samplers.Sampler], n: int, shape: Sequence[int], seed: int = 0,
                 steps: Optional[int] = None, device: Union[str, torch.device] = "cpu", labels: Optional[Tensor] = None,
                 batch_size: int = 256, only: Optional[Iterable[int]] = None, options: Optional[Dict[str, Any]] = None,
                 progress: bool = False) -> Tensor:
    """n samples of ``model``; ``only`` restricts to some chunk indices (then their samples, concatenated, are returned)."""
    if isinstance(sampler, str):
        sampler = make_sampler(sampler, steps, **(options or {}))
    parts = []
    wanted = None if only is None else set(only)
    for k, size in chunks(n, batch_size):
        if wanted is not None and k not in wanted:
            continue
        y = labels[k * batch_size:k * batch_size + size] if labels is not None else None
        parts.append(sample_chunk(model, sampler, k, size, shape, seed, device, y, progress))
    return torch.cat(parts) if parts else torch.empty((0, *shape))


def to_output(x: Tensor, image: bool) -> Tensor:
    """Images from the model's [−1, 1] to [0, 1] (clamped); vectors unchanged (data units)."""
    return to_unit(x) if image else x


def save_samples(x: Tensor, path, reference: Optional[Tensor] = None) -> None:
    """Write samples in model units: ``.npz`` (key ``x``, float32; images in [0, 1]) or ``.png``
    (an image grid, or a scatter plot of 2-D vectors over ``reference``)."""
    path = Path(path)
    image = x.dim() == 4
    out = to_output(x.float().cpu(), image)
    if path.suffix == ".npz":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=out.numpy().astype(np.float32))
    elif path.suffix == ".png":
        if image:
            from .plotting import image_grid

            image_grid(out, path)
        elif out.dim() == 2 and out.shape[1] == 2:
            from .plotting import scatter_panels

            lim = float(max(out.abs().quantile(0.995), 1.0)) * 1.15
            scatter_panels({"samples": out}, path, reference=None if reference is None else reference.cpu(), lim=lim)
        else:
            raise ValueError(f"a .png needs images (n, C, H, W) or 2-D points (n, 2); got samples of shape {tuple(out.shape)}")
    else:
        raise ValueError(f"out must end in .npz or .png, got {path.name}")
