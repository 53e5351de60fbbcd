"""The solver benchmark's figure: error vs NFE per problem (ours solid, peers dashed, best-of envelopes in grey),
and the stochastic samplers' sliced W2 to data against the data-vs-data floor."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from .._io import atomic_path
from .solver_measure import Result, ok_points
from .solver_methods import FITTED_SUFFIX

#: the curves drawn (each at its best grid/schedule per NFE); every run is in the tables and the JSON
PLOT_OURS = ("DDIM", "DPM-Solver++(2M)", "DPM-Solver++(3M)", "DPM-Solver(3M)", "DPM-Solver++(3S)", "UniPC-3 bh2",
             "Heun (EDM)", "adaptive DPM-Solver-23", "SDE-DPM-Solver++(2M)", "SDE-DPM-Solver++(3M)", "Euler-Maruyama",
             "DDPM (ancestral)", "adaptive SDE (Gotta Go Fast)", "DPM-Solver++(3M) (fitted grid)",
             "UniPC-3 bh2 (fitted grid)")
PLOT_PEERS = ("euler", "heun", "lms", "dpmpp_2m", "dpmpp_3m_sde(eta=0)", "dpm_fast", "dpm_adaptive", "RK45 (scipy)",
              "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde")


def _envelope(results: Sequence[Result], ours: bool) -> List[Tuple[int, float]]:
    """Per budget the least error of the fixed-step runs of ours on default grids (``ours``) or of the peers."""
    best: Dict[int, float] = {}
    for r in results:
        if r.kind == "fixed" and (r.family == "ours") == ours and not r.fitted:
            for p in ok_points(r.points):
                best[p.budget] = min(best.get(p.budget, math.inf), p.error)
    return sorted(best.items())


def plot(report: Dict[str, Any], runs: Dict[str, Dict[str, Any]], path: Path) -> None:
    """Top row: RMS error vs NFE (log–log), one panel per problem: the main methods at their best grid/schedule
    (ours solid, peers dashed, tolerance sweeps with round markers) and the best-of-all envelopes (grey).
    Bottom row: stochastic samplers' sliced W2 to data vs NFE, with the data-vs-data range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["problems"])
    fig, axes = plt.subplots(2, len(names), figsize=(7.5 * len(names), 11), squeeze=False)
    for col, name in enumerate(names):
        groups = runs[name]
        for row, key in enumerate(("deterministic", "stochastic")):
            ax = axes[row][col]
            curves: Dict[Tuple[str, str], Dict[int, float]] = {}
            fixed: Dict[Tuple[str, str], bool] = {}
            for r in groups[key] + (groups["tolerance"] if key == "deterministic" else []):
                pts = ok_points(r.points)
                if not pts or r.method not in (PLOT_OURS if r.family == "ours" else PLOT_PEERS):
                    continue
                label = (r.family, r.method)
                fixed[label] = r.kind == "fixed"
                merged = curves.setdefault(label, {})
                for p in pts:  # fixed-step: per NFE the best over grids/schedules; sweeps: each run
                    merged[p.nfe] = min(merged.get(p.nfe, math.inf), p.error)
            if key == "deterministic":
                for ours, ls in ((True, "-"), (False, "--")):
                    env = _envelope(groups[key], ours)
                    if env:
                        ax.plot(*zip(*env), color="0.6", lw=5, ls=ls, alpha=0.45, zorder=0,
                                label=f"best {'ours, default grids' if ours else 'peer'} (fixed step)")
            tab10, dark2 = plt.get_cmap("tab10").colors, plt.get_cmap("Dark2").colors  # greys are for the envelopes
            colors = {True: iter(tab10[:7] + tab10[8:] + dark2[:7]), False: iter(dark2[:7] + tab10[:7])}
            for (family, method), pts in curves.items():
                xs, ys = zip(*sorted(pts.items()))
                ours = family == "ours"
                fitted = method.endswith(FITTED_SUFFIX)
                ax.plot(xs, ys, ls="-" if ours else "--", marker="s" if fitted else ("." if fixed[(family, method)] else "o"),
                        ms=4 if fixed[(family, method)] else 5, color=next(colors[ours]), lw=2.2 if fitted else (1.5 if ours else 1.1),
                        label=("" if ours else f"{family}: ") + method)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("NFE")
            if key == "deterministic":
                lo, hi = ax.get_ylim()
                ax.set_ylim(max(lo, 1e-7), min(hi, 10.0))
                ax.set_ylabel("pathwise RMS error vs reference")
                ax.set_title(f"{name}: PF-ODE samplers (each at its best grid / schedule)", fontsize=10)
            else:
                floor = report["problems"][name]["sw_floor"]
                ax.axhspan(floor["min"], floor["max"], color="k", alpha=0.08, label="data vs data (range)")
                ax.axhline(floor["mean"], color="k", lw=0.8, ls=":")
                ax.set_ylabel("sliced W2 to data")
                ax.set_title(f"{name}: stochastic samplers", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
