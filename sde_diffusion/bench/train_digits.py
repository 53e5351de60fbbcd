"""Training benchmark: train on digits with the CLI's defaults, then measure sample quality per sampler.

Digits (1,797 8×8 images) are split once (seed 0) into 1,497 training and 300 held-out images. The model
trains on the training part with ``sde-diffusion train --data digits``'s defaults; a small classifier
(:mod:`.digits_quality`, trained in seconds on the same training part) gives, for real held-out digits and
for the samples of each sampler: the Fréchet distance on its features against the real-vs-real floor at the
same sizes, the mean class confidence, the class histogram, and the nearest-neighbour copy ratio.

Run ``sde-diffusion bench train [--quick] [--checkpoint RUN] [--out DIR]``; writes ``train_digits.md``,
``train_digits.json`` and ``train_digits.png`` (training curve and sample grid). Targets: FD ≤ 2× the floor,
confidence ≥ 0.9, copy ratio well above 0 (no copying: about 1 is what new real digits score).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from .._io import atomic_path, write_text
from ..data import digits
from ..sample import draw_samples, make_sampler, to_output
from .digits_quality import quality_report, train_classifier
from ._standalone import machine

DEFAULT_OUT = "benchmarks/results"
HOLDOUT = 300
TARGETS = {"fd_ratio": 2.0, "confidence": 0.9}

#: (label, sampler name, options): EM and PC with many steps, the fast solvers at low NFE, an adaptive one
SAMPLERS: List[Tuple[str, str, Dict]] = [
    ("Euler–Maruyama (200 steps)", "euler_maruyama", {"steps": 200}),
    ("PC reverse diffusion + Langevin (100 × 2)", "predictor_corrector", {"steps": 100}),
    ("DDIM (50 steps)", "ddim", {"steps": 50}),
    ("DPM-Solver++ 2M (20 NFE)", "dpm_solver", {"steps": 19, "order": 2}),
    ("UniPC-3 (10 NFE)", "unipc", {"steps": 9, "order": 3}),
    ("adaptive UniPC-4 (rtol 1e-3)", "unipc_adaptive", {"rtol": 1e-3, "atol": 1e-3}),
]


def train_model(out: Path, quick: bool, log=print) -> Tuple[Path, float]:
    """``sde-diffusion train --data digits`` on the training split; returns the run dir and seconds."""
    from ..data import Dataset
    from ..nets import build
    from ..training import RunConfig, TrainConfig, Trainer
    from ..training.checkpoint import build_model
    from ..training.config import ModelConfig
    from ..training.presets import PRESETS, net_config

    train, _ = split()
    preset = PRESETS["digits"]
    settings = dict(preset["train"])
    if quick:
        settings.update(steps=200, checkpoint_every=0)
    settings["progress"] = False
    cfg = RunConfig(data="digits", model=ModelConfig(sde={"name": preset["sde"]}, net=net_config(preset["net"], (1, 8, 8)),
                                                      prediction=preset["prediction"], data_shape=[1, 8, 8]),
                    train=TrainConfig(**settings))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, build(cfg.model.net))
    data = Dataset(x=train[0] * 2 - 1, y=train[1], num_classes=10, name="digits-train")
    start = time.perf_counter()
    Trainer(model, data, cfg.train, out_dir=out, data_name="digits").fit()
    seconds = time.perf_counter() - start
    log(f"trained {cfg.train.steps} steps in {seconds:.0f} s")
    return out, seconds


def split():
    """(train images01, labels), (holdout images01, labels): a fixed permutation (seed 0)."""
    ds = digits()
    perm = torch.randperm(len(ds.x), generator=torch.Generator().manual_seed(0))
    x01 = to_output(ds.x, image=True)
    hold, train = perm[:HOLDOUT], perm[HOLDOUT:]
    return (x01[train], ds.y[train]), (x01[hold], ds.y[hold])


def measure(run: Path, n: int, log=print) -> Dict:
    from ..training import load_checkpoint

    (train01, train_y), (hold01, _) = split()
    clf = train_classifier(train01, train_y, seed=0)
    ckpt = load_checkpoint(run)
    half = HOLDOUT // 2  # the real row: held-out digits split in half, each half against the other (both unseen)
    rows = {"real held-out digits": {**quality_report(hold01[:half], train01, hold01[half:], clf), "nfe": 0, "seconds": 0.0}}
    grids = {}
    for label, name, options in SAMPLERS:
        options = dict(options)
        steps = options.pop("steps", None)
        sampler = make_sampler(name, steps, **options)
        probe = sampler.sample(ckpt.model, shape=(2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        x = draw_samples(ckpt.model, sampler, n, (1, 8, 8), seed=0, batch_size=500)
        seconds = time.perf_counter() - start
        x01 = to_output(x, image=True)
        report = quality_report(x01, train01, hold01, clf)
        rows[label] = {**report, "nfe": probe.nfe, "seconds": seconds}
        grids[label] = x01[:100]
        log(f"{label}: FD ratio {report['fd_ratio']:.2f}, confidence {report['confidence']:.3f}, "
            f"copy ratio {report['copy_ratio']:.2f}, {seconds:.1f} s")
    return {"rows": rows, "grids": grids, "n": n, "step": ckpt.step, "config": ckpt.config}


def curve(run: Path) -> List[Dict]:
    log = run / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def format_report(result: Dict, meta: Dict) -> str:
    lines = [
        "# Training benchmark: digits",
        "",
        f"Produced by `{meta['command']}` on {meta['machine']} (torch {meta['torch']}, {meta['threads']} thread(s)).",
        "",
        f"Model: `sde-diffusion train --data digits` defaults ({meta['config']}), trained {result['step']} steps in "
        f"{meta['train_seconds']:.0f} s on 1,497 of the 1,797 digits; 300 held out. Samples: {result['n']} per sampler (EMA weights).",
        "Quality is measured with a small CNN trained in seconds on the same 1,497 digits: FD = Fréchet distance of its",
        "32 penultimate features to the 300 held-out digits; floor = mean FD of 10 random real training subsets of the",
        "same size to the same held-out digits; confidence = mean max softmax probability; copy ratio = median distance",
        "of a sample to its nearest training image over the same median for held-out digits (≈ 1: no copying, 0: copies).",
        "The real row compares 150 held-out digits with the other 150.",
        "",
        f"Targets: FD ≤ {TARGETS['fd_ratio']}× floor, confidence ≥ {TARGETS['confidence']}.",
        "",
        "| samples | NFE | FD | floor | FD / floor | confidence | copy ratio | class histogram | seconds | targets met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in result["rows"].items():
        ok = r["fd_ratio"] <= TARGETS["fd_ratio"] and r["confidence"] >= TARGETS["confidence"] and r["copy_ratio"] > 0.5
        lines.append(f"| {label} | {r['nfe']} | {r['fd']:.3f} | {r['fd_floor']:.3f} | {r['fd_ratio']:.2f} | {r['confidence']:.3f} | "
                     f"{r['copy_ratio']:.2f} | {' '.join(map(str, r['class_histogram']))} | {r['seconds']:.1f} | {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(result: Dict, curve_rows: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import make_grid

    labels = list(result["grids"])
    fig, axes = plt.subplots(1, 1 + len(labels), figsize=(3.2 * (1 + len(labels)), 3.4))
    if curve_rows:
        axes[0].plot([r["step"] for r in curve_rows], [r["loss"] for r in curve_rows])
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("DSM loss")
        axes[0].set_title("training curve", fontsize=9)
    for ax, label in zip(axes[1:], labels):
        ax.imshow(make_grid(result["grids"][label], nrow=10, padding=1, scale=1).squeeze(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def run(args: argparse.Namespace, command: str, log=print) -> Dict:
    out = Path(args.out)
    where = machine()  # before training: it records the load other processes put on the machine
    if args.checkpoint:
        run_dir, seconds = Path(args.checkpoint), float("nan")
    else:
        run_dir, seconds = train_model(Path(args.run_dir), args.quick, log)
    n = 200 if args.quick else args.n
    result = measure(run_dir, n, log)
    cfg = result["config"]
    meta = {"command": command, "machine": where, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "train_seconds": seconds,
            "config": f"net {cfg.model.net.get('type')} {cfg.model.net.get('channels', '')}, sde {cfg.model.sde['name']}, "
                      f"prediction {cfg.model.prediction}, weighting {cfg.train.weighting}, batch {cfg.train.batch_size}, lr {cfg.train.lr}"}
    curve_rows = curve(run_dir)
    report = format_report(result, meta)
    log(report)
    write_text(out / "train_digits.md", report)
    write_text(out / "train_digits.json", json.dumps({"meta": meta, "rows": result["rows"], "curve": curve_rows}, indent=1))
    plot(result, curve_rows, out / "train_digits.png")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="200 training steps and 200 samples (a smoke run)")
    parser.add_argument("--checkpoint", help="measure this run directory instead of training a new one")
    parser.add_argument("--run-dir", default="runs/bench_digits", help="where the benchmark's training run goes (default %(default)s)")
    parser.add_argument("--n", type=int, default=1000, help="samples per sampler (default %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="results folder (default %(default)s)")
    return parser
