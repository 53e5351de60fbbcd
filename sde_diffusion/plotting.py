"""Figures (matplotlib, Agg backend) and image grids (Pillow), written atomically."""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch
from torch import Tensor

from ._checks import check_finite, positive_int
from ._io import PathLike, atomic_path


def scatter_panels(panels: Dict[str, Tensor], path: PathLike, reference: Optional[Tensor] = None, lim: float = 3.5) -> None:
    """One 2-D scatter plot per entry (title → (n, 2) points), the reference drawn faintly beneath each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, pts) in zip(axes.flat, panels.items()):
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=2, c="lightgray", lw=0)
        ax.scatter(pts[:, 0].cpu(), pts[:, 1].cpu(), s=2, c="tab:blue", lw=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


GRID_MIN_WIDTH = 256  # px: small images are enlarged by an integer factor until the grid is this wide


def make_grid(images01: Tensor, nrow: Optional[int] = None, padding: int = 1, scale: int = 1,
              pad_value: float = 1.0) -> np.ndarray:
    """Tile images (N, C, H, W) in [0, 1] into one uint8 picture (H', W', C), as torchvision's ``make_grid``.

    ``nrow`` images per row (default ⌈√N⌉), ``padding`` pixels of ``pad_value`` around every cell
    (empty cells are filled with it too), so H' = s·(rows·(H + p) + p), W' = s·(nrow·(W + p) + p), then the
    whole grid enlarged ``scale`` = s times by nearest neighbour.  Pixels are ⌊255·u + ½⌋; C ∈ {1, 3, 4}.
    """
    if not isinstance(images01, Tensor):
        raise TypeError(f"images01 must be a torch.Tensor (N, C, H, W), got {type(images01).__name__}")
    if images01.dim() != 4 or images01.shape[0] == 0 or images01.shape[1] not in (1, 3, 4):
        raise ValueError(f"images01 must have shape (N, C, H, W) with N >= 1 and C in {{1, 3, 4}}, got {tuple(images01.shape)}")
    if not images01.is_floating_point():
        raise TypeError(f"images01 must be a float tensor in [0, 1], got dtype {images01.dtype}")
    images = images01.detach().cpu().to(torch.float64)
    check_finite(images, "images01")
    low, high = images.min().item(), images.max().item()
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"images01 must be in [0, 1], found [{low:.4g}, {high:.4g}]; map [-1, 1] images with data.to_unit")
    n, channels, height, width = images.shape
    nrow = math.ceil(math.sqrt(n)) if nrow is None else positive_int(nrow, "nrow")
    if isinstance(padding, bool) or int(padding) != padding or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding}")
    padding = int(padding)
    scale = positive_int(scale, "scale")
    if not 0.0 <= float(pad_value) <= 1.0:
        raise ValueError(f"pad_value must be in [0, 1], got {pad_value}")
    rows = math.ceil(n / nrow)
    pixels = np.floor(images.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    grid = np.full((rows * (height + padding) + padding, nrow * (width + padding) + padding, channels),
                   int(math.floor(float(pad_value) * 255 + 0.5)), dtype=np.uint8)
    for i in range(n):
        top = padding + (i // nrow) * (height + padding)
        left = padding + (i % nrow) * (width + padding)
        grid[top:top + height, left:left + width] = pixels[i]
    return _enlarge(grid, scale)


def _enlarge(picture: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour zoom by an integer factor: every pixel becomes a factor × factor block."""
    return picture.repeat(factor, axis=0).repeat(factor, axis=1)


def image_grid(images01: Tensor, path: PathLike, nrow: Optional[int] = None, padding: int = 1,
               scale: Optional[int] = None, pad_value: float = 1.0) -> None:
    """Write images (N, C, H, W) in [0, 1] as one PNG grid (see :func:`make_grid`), atomically, with Pillow.

    ``scale`` defaults to the smallest integer that makes the grid at least 256 px wide (1 for large images).
    C = 1 is written as grey, 3 as RGB, 4 as RGBA.
    """
    from PIL import Image

    unscaled = make_grid(images01, nrow, padding, 1, pad_value)
    scale = max(1, math.ceil(GRID_MIN_WIDTH / unscaled.shape[1])) if scale is None else positive_int(scale, "scale")
    grid = _enlarge(unscaled, scale)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)  # uint8: L, RGB or RGBA
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
