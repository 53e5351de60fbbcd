"""Classic 2-D toy distributions as samplers: moons, swiss roll, 8 gaussians, checkerboard."""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from .gmm import eight_gaussians as _eight_gaussians_gmm


def _uniform(n: int, generator: Optional[torch.Generator]) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _normal(shape, generator: Optional[torch.Generator]) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def moons(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.05) -> Tensor:
    """Two interleaving half circles (as scikit-learn's make_moons), centred and scaled to unit-ish std."""
    half = n // 2
    angle = math.pi * _uniform(n, generator)
    upper = torch.stack([angle.cos(), angle.sin()], 1)
    lower = torch.stack([1 - angle.cos(), 0.5 - angle.sin()], 1)
    x = torch.where((torch.arange(n) < half)[:, None], upper, lower)
    x = x + noise * _normal((n, 2), generator)
    return ((x - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 2.0).float()


def swiss_roll(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.1) -> Tensor:
    """The 2-D swiss roll (x, z of scikit-learn's make_swiss_roll), scaled to roughly [−2, 2]²."""
    t = 1.5 * math.pi * (1 + 2 * _uniform(n, generator))
    x = torch.stack([t * t.cos(), t * t.sin()], 1) + noise * _normal((n, 2), generator)
    return (x / 5.0).float()


def eight_gaussians(n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Eight Gaussians on a circle of radius 2, std 0.2 (see :func:`gmm.eight_gaussians` for its exact score)."""
    return _eight_gaussians_gmm().sample(n, generator)


def checkerboard(n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Uniform on the black squares of a 4×4 checkerboard over [−2, 2]²."""
    x1 = 4 * _uniform(n, generator) - 2
    col = torch.floor(x1 + 2)  # 0..3
    row = torch.randint(0, 2, (n,), generator=generator).double() * 2 + (col % 2)  # rows of the same colour
    x2 = row + _uniform(n, generator) - 2
    return torch.stack([x1, x2], 1).float()


TOY_DATASETS: Dict[str, Callable[..., Tensor]] = {
    "moons": moons,
    "swiss_roll": swiss_roll,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}


def toy_sample(name: str, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """n samples (shape (n, 2)) of the named toy dataset."""
    if name not in TOY_DATASETS:
        raise ValueError(f"name must be one of {sorted(TOY_DATASETS)}, got {name!r}")
    if int(n) != n or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n}")
    return TOY_DATASETS[name](int(n), generator)
