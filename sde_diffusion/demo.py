"""The demo: every sampler on a 2-D Gaussian mixture whose score is known exactly, then a trained network.

First the ground-truth score of the noised eight-Gaussians mixture drives each sampler, so those rows of the
table (sampler, NFE, wall time, distance to data) show the samplers themselves. Then (``train=True``)
``sd.nets.MLP`` is trained on samples of the same mixture with the toy preset (denoising score matching, under a
minute on CPU) and a few samplers draw from it with the same x_T; its panels and its rows, marked
"(trained MLP)", sit beside the exact-score ones, so what the network loses against the true score is visible.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from . import samplers
from ._io import write_text
from .data import eight_gaussians
from .metrics import mmd, sliced_wasserstein
from .plotting import scatter_panels
from .sde import VPSDE

DEMO_SAMPLERS: List[Tuple[str, samplers.Sampler]] = [
    ("Euler-Maruyama (500)", samplers.EulerMaruyama(steps=500)),
    ("reverse diffusion (500)", samplers.ReverseDiffusion(steps=500)),
    ("PC rd+langevin (250)", samplers.PredictorCorrector(steps=250)),
    ("PF-ODE dopri5", samplers.ProbabilityFlowODE(method="dopri5", rtol=1e-5, atol=1e-5)),
    ("PF-ODE rk4 (25)", samplers.ProbabilityFlowODE(method="rk4", steps=25, grid="log_snr")),
    ("torchsde srk (50)", samplers.TorchSDE(method="srk", steps=50)),
    ("DDPM (1000)", samplers.DDPM(steps=1000)),
    ("DDIM (50)", samplers.DDIM(steps=50, grid="log_snr")),
    ("DPM-Solver++ 3M (10)", samplers.DPMSolver(steps=10, order=3)),
    ("UniPC-3 (10)", samplers.UniPC(steps=10, order=3)),
    ("EDM Heun (10)", samplers.Heun(steps=10)),
    ("SDE-DPM-Solver++ 2M (50)", samplers.DPMSolver(steps=50, order=2, eta=1.0)),
    ("adaptive DPM-Solver-23", samplers.AdaptiveDPMSolver(rtol=0.01, atol=0.001)),
    ("adaptive UniPC-4", samplers.AdaptiveUniPC(rtol=0.01, atol=0.001)),
    ("adaptive SDE (GGF)", samplers.AdaptiveSDE()),
]


#: the samplers (names of ``DEMO_SAMPLERS``) that also draw from the trained network
TRAINED_SAMPLERS = ("DPM-Solver++ 3M (10)", "UniPC-3 (10)", "SDE-DPM-Solver++ 2M (50)")
TRAINED_SUFFIX = " (trained MLP)"
#: training samples drawn from the mixture for the network (the size ``sde-diffusion train --data <toy>`` uses)
TRAIN_SAMPLES = 100_000


@dataclass
class DemoRow:
    name: str
    nfe: int
    seconds: float
    mmd: float
    sliced_w2: float


def run_demo(out_dir: str | Path = "demo_output", n: int = 2000, seed: int = 0, *, train: bool = True) -> List[DemoRow]:
    """Run every demo sampler, print the table, write ``samples.png`` and ``table.md`` to ``out_dir``.

    With ``train`` the MLP is also trained on the mixture's samples (toy preset; the time is printed) and the
    :data:`TRAINED_SAMPLERS` draw from its EMA weights; each such row and panel follows its exact-score one.
    """
    if int(n) != n or n < 10:
        raise ValueError(f"n must be an integer >= 10, got {n}")
    if not isinstance(train, bool):
        raise TypeError(f"train must be True or False, got {train!r}")
    out_dir = Path(out_dir)
    gmm, sde = eight_gaussians(), VPSDE()
    model = gmm.score_model(sde)
    data = gmm.sample(n, torch.Generator().manual_seed(seed))
    floor = mmd(gmm.sample(n, torch.Generator().manual_seed(seed + 1)), data)
    exact_runs = {name: _draw(name, sampler, model, data, seed) for name, sampler in DEMO_SAMPLERS}
    trained_runs: Dict[str, Tuple[DemoRow, torch.Tensor]] = {}
    note: Optional[str] = None
    panels: Dict[str, torch.Tensor] = {"data": data}
    if train:
        from .bench.score_error import train_toy_model

        train_x = gmm.sample(TRAIN_SAMPLES, torch.Generator().manual_seed(seed + 4))
        trained = train_toy_model(train_x, seed=seed)
        note = (f"Rows marked{TRAINED_SUFFIX}: sd.nets.MLP(dim=2) trained on {TRAIN_SAMPLES} samples with the toy preset "
                f"({trained.steps} steps, batch {trained.config['batch_size']}) in {trained.seconds:.1f} s; its EMA weights, "
                "the same x_T and noise as the exact-score rows.")
        print(f"trained the MLP ({trained.steps} steps, toy preset) in {trained.seconds:.1f} s")
        samplers_by_name = dict(DEMO_SAMPLERS)
        for name in TRAINED_SAMPLERS:
            trained_runs[name] = _draw(name + TRAINED_SUFFIX, samplers_by_name[name], trained.ema_model, data, seed)
        # the figure has 4 columns: data and these samplers' exact panels on top, the training data and the
        # trained panels below them, then the other samplers
        panels.update((name, exact_runs[name][1]) for name in TRAINED_SAMPLERS)
        panels["MLP training data"] = train_x[:n]
        panels.update((row.name, x) for row, x in trained_runs.values())
    rows: List[DemoRow] = []
    for name, (row, x) in exact_runs.items():
        rows.append(row)
        panels.setdefault(name, x)
        if name in trained_runs:
            rows.append(trained_runs[name][0])
    table = format_table(rows, floor, note)
    print(table)
    scatter_panels(panels, out_dir / "samples.png", reference=data)
    write_text(out_dir / "table.md", table + "\n")
    print(f"\nwrote {out_dir / 'samples.png'} and {out_dir / 'table.md'}")
    return rows


def _draw(name: str, sampler: samplers.Sampler, model, data: torch.Tensor, seed: int) -> Tuple[DemoRow, torch.Tensor]:
    """One sampler run from the demo's x_T and noise (seed + 2), timed and scored against ``data``."""
    start = time.perf_counter()
    out = sampler.sample(model, shape=tuple(data.shape), generator=torch.Generator().manual_seed(seed + 2))
    seconds = time.perf_counter() - start
    proj = torch.Generator().manual_seed(seed + 3)
    row = DemoRow(name, out.nfe, seconds, mmd(out.x, data), sliced_wasserstein(out.x, data, generator=proj))
    return row, out.x


def format_table(rows: List[DemoRow], mmd_floor: float, note: Optional[str] = None) -> str:
    lines = [
        "| sampler | NFE | wall time (s) | MMD² to data | sliced W2 to data |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r.name} | {r.nfe} | {r.seconds:.2f} | {r.mmd:.5f} | {r.sliced_w2:.4f} |" for r in rows]
    lines.append(f"\nMMD² between two independent data sets of the same size (noise floor): {mmd_floor:.5f}")
    if note:
        lines.append(f"\n{note}")
    return "\n".join(lines)
