"""Figures (matplotlib, Agg backend), written atomically."""
from __future__ import annotations

import math
from typing import Dict, Optional

from torch import Tensor

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
