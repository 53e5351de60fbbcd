"""Learned vs fixed noise schedule on digits: the continuous ELBO and its estimator's variance (VDM).

Digits are split once (seed 0) into 1,541 training and 256 held-out images. The tiny UNet, from the same
initial weights, trains three times for the same steps, batch, learning rate and seed, always fed the log-SNR
(time input "log_snr"), always on the continuous −ELBO (prior KL + Gaussian reconstruction at eps + diffusion term):

* "VP, t uniform": the fixed VP SDE, t ~ U[eps, T] and the weight ½ γ'(t) (:func:`~sde_diffusion.losses.vdm_loss`:
  VDM's estimator on a fixed schedule);
* "VP, λ uniform": the fixed VP SDE, λ uniform (``dsm_loss`` weighting "likelihood" with importance sampling,
  Song et al. 2021; the diffusion term only): the t-uniform estimator of a γ linear in t;
* "learned": :class:`~sde_diffusion.sde.LearnedVPSDE`, initialised with VP's end points and a near-linear γ,
  trained with the net: end points by the ELBO, interior by VDM's variance objective (``train --sde learned``).

Then every model (EMA weights) is scored on the held-out images by both estimators of its own −ELBO,
``draws`` independent draws per image: "t uniform" (:func:`~sde_diffusion.losses.vdm_loss`) and "λ uniform"
(:func:`~sde_diffusion.elbo.continuous_elbo`). Reported per row: the −ELBO in bits/dim (density bound of the
Gaussian decoder at the data points, as ``ELBOTerms.bits_per_dim``) and the variance of one draw per image
(nats², averaged over images). The two estimators of one model have the same mean; the variance is what the
learned interior lowers (for a network that sees only the SNR, λ-uniform draws make the variance independent of
the interior, so that row is the same for any schedule with these end points).

Run ``sde-diffusion bench learned_schedule [--quick] [--steps N] [--out DIR]``; writes ``learned_schedule.md``,
``learned_schedule.json`` and ``learned_schedule.png`` (γ(t) of the schedules).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from .._checks import positive_int
from .._io import atomic_path, write_text
from ..data import Dataset, digits
from ..elbo import continuous_elbo
from ..likelihood import bits_per_dim_of_logp
from ..losses import vdm_loss
from ..model import ScoreModel
from ..sde import LearnedVPSDE, VPSDE
from ._standalone import entry_points, jsonable, machine, torch_threads

DEFAULT_OUT = "benchmarks/results"
HOLDOUT = 256
F64 = torch.float64
RUNS = ("VP, t uniform", "VP, λ uniform", "learned")
ESTIMATORS = ("t uniform", "λ uniform")
#: steps, batch, lr, warm-up, evaluation draws per image: ~4 min on 2 idle CPU cores (tiny UNet; vdm_loss evaluates it twice)
FULL = {"steps": 600, "batch_size": 64, "lr": 2e-3, "warmup": 100, "draws": 16}
QUICK = {"steps": 4, "batch_size": 16, "lr": 2e-3, "warmup": 2, "draws": 2}


def split():
    """(train images, held-out images) in [−1, 1]: a fixed permutation (seed 0)."""
    ds = digits()
    perm = torch.randperm(len(ds.x), generator=torch.Generator().manual_seed(0))
    return ds.x[perm[HOLDOUT:]], ds.x[perm[:HOLDOUT]]


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def _elbo_trainer():
    from ..training import Trainer

    class ELBOTrainer(Trainer):
        """The loop with :func:`vdm_loss` per dimension on a fixed SDE (t uniform): VDM's estimator, fixed schedule."""

        def loss(self, x0: Tensor, model_kwargs: Dict[str, Any]) -> Tensor:
            return vdm_loss(self.train_model, x0, t_sampling=self.config.t_sampling, generator=self.loss_generator,
                            model_kwargs=model_kwargs).mean() / x0[0].numel()

    return ELBOTrainer


@dataclass
class Trained:
    name: str
    model: ScoreModel  #: EMA weights
    seconds: float
    last_loss: float


def train(name: str, x: Tensor, settings: Dict[str, Any], seed: int) -> Trained:
    """One run of :data:`RUNS` on images ``x``, in memory."""
    from ..nets import build
    from ..training import TrainConfig, Trainer
    from ..training.presets import net_config

    sde = LearnedVPSDE() if name == "learned" else VPSDE()
    cfg = TrainConfig(steps=settings["steps"], batch_size=settings["batch_size"], lr=settings["lr"],
                      warmup=settings["warmup"], weighting="likelihood", seed=seed, progress=False, checkpoint_every=0,
                      log_every=max(1, settings["steps"] // 4))
    torch.manual_seed(seed)
    model = ScoreModel(build(net_config("tiny", x.shape[1:])), sde, prediction="eps", time_input="log_snr")
    trainer = (_elbo_trainer() if name == "VP, t uniform" else Trainer)(model, Dataset(x=x, name="digits"), cfg)
    start = time.perf_counter()
    record = trainer.fit()
    seconds = time.perf_counter() - start
    trainer.ema.net.eval()
    return Trained(name, trainer.ema_model(), seconds, float(record.get("loss", math.nan)))


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def estimate(model: ScoreModel, x: Tensor, estimator: str, draws: int, seed: int) -> Tuple[Tensor, Tensor]:
    """Per image (B,): the mean of ``draws`` independent draws of the −ELBO estimator ``estimator`` (nats, float64)
    and the unbiased variance of one draw."""
    if positive_int(draws, "draws") < 2:
        raise ValueError(f"draws must be at least 2 to give a variance, got {draws}")
    g = torch.Generator().manual_seed(seed)
    if estimator == "t uniform":
        values = torch.stack([vdm_loss(model, x, t_sampling="uniform", generator=g).double() for _ in range(draws)])
        return values.mean(0), values.var(0, unbiased=True)
    if estimator == "λ uniform":
        res = continuous_elbo(model, x, t_samples=draws, generator=g)
        return res.total, res.variance
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def summarise(per_image: Tensor, variance: Tensor, dim: int) -> Dict[str, float]:
    """Mean −ELBO (bits/dim, nats) with standard errors over images, and the mean per-image variance of one draw."""
    n = per_image.shape[0]
    bpd = bits_per_dim_of_logp(-per_image, dim)
    return {"nelbo_nats": float(per_image.mean()), "nelbo_nats_se": float(per_image.std() / math.sqrt(n)),
            "bits_per_dim": float(bpd.mean()), "bits_per_dim_se": float(bpd.std() / math.sqrt(n)),
            "variance": float(variance.mean()), "variance_se": float(variance.std() / math.sqrt(n)), "images": n}


def schedule_curves(models: Dict[str, ScoreModel], points: int = 101) -> Dict[str, Any]:
    """γ(t) = −log SNR of every model's SDE and of a fresh LearnedVPSDE (the initial schedule) on a t grid."""
    t = torch.linspace(1e-3, 1.0, points, dtype=F64)
    curves = {"t": t.tolist(), "initial learned": (-2 * LearnedVPSDE().log_snr(t)).tolist()}
    for name, model in models.items():
        curves[name] = (-2 * model.sde.log_snr(t)).tolist()
    return curves


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, command: str, log=print) -> Dict[str, Any]:
    with torch_threads(args.threads or torch.get_num_threads()):
        return _run(args, command, log)


def _run(args: argparse.Namespace, command: str, log) -> Dict[str, Any]:
    settings = dict(QUICK if args.quick else FULL)
    if args.steps:
        settings["steps"] = positive_int(args.steps, "--steps")
    seed, where = int(args.seed), machine()
    train_x, hold_x = split()
    if args.quick:
        hold_x = hold_x[:16]
    dim = hold_x[0].numel()
    trained = {}
    for name in RUNS:
        trained[name] = train(name, train_x, settings, seed)
        log(f"{name}: {settings['steps']} steps in {trained[name].seconds:.1f} s (last logged loss {trained[name].last_loss:.4f})")
    rows = []
    for name, run_ in trained.items():
        for estimator in ESTIMATORS:
            start = time.perf_counter()
            per_image, variance = estimate(run_.model, hold_x, estimator, settings["draws"], seed + 1)
            rows.append({"training": name, "estimator": estimator, **summarise(per_image, variance, dim),
                         "seconds": time.perf_counter() - start})
            log(f"{name} / {estimator}: {rows[-1]['bits_per_dim']:.4f} bits/dim, variance {rows[-1]['variance']:.4g} nats²")
    learned = trained["learned"].model.sde
    meta = {"command": command, "machine": where, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "quick": bool(args.quick), "seed": seed, "settings": settings, "train_images": len(train_x),
            "held_out_images": len(hold_x), "dim": dim,
            "train_seconds": {name: r.seconds for name, r in trained.items()},
            "last_logged_loss": {name: r.last_loss for name, r in trained.items()},
            "end_points": {"VP": [float(-2 * VPSDE().log_snr(v)) for v in (1e-3, 1.0)],
                           "learned": [learned.gamma_min.item(), learned.gamma_max.item()]}}
    report = jsonable({"meta": meta, "rows": rows,
                       "schedules": schedule_curves({name: r.model for name, r in trained.items()})})
    out = Path(args.out)
    write_text(out / "learned_schedule.json", json.dumps(report, indent=1) + "\n")
    write_text(out / "learned_schedule.md", markdown(report))
    plot(report, out / "learned_schedule.png")
    log(f"wrote {out / 'learned_schedule.md'}, {out / 'learned_schedule.json'}, {out / 'learned_schedule.png'}")
    return report


# ---------------------------------------------------------------------------------------------
# report and figure
# ---------------------------------------------------------------------------------------------
def markdown(report: Dict[str, Any]) -> str:
    m, rows = report["meta"], report["rows"]
    s = m["settings"]
    ref = next(r for r in rows if r["training"] == "VP, t uniform" and r["estimator"] == "t uniform")
    lines = [
        "# Learned vs fixed noise schedule (digits, continuous ELBO)",
        "",
        f"Produced by `{m['command']}` on {m['machine']} (torch {m['torch']}, {m['threads']} thread(s)).",
        "",
        f"Tiny UNet, same initial weights, {s['steps']} steps, batch {s['batch_size']}, lr {s['lr']:g}, warm-up "
        f"{s['warmup']}, on {m['train_images']} digits; scored (EMA weights) on {m['held_out_images']} held-out digits "
        f"with {s['draws']} independent draws per image. Every net is fed the log-SNR. Training seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in m["train_seconds"].items()) + ".",
        "",
        "| training | estimator | −ELBO (bits/dim) | −ELBO (nats/image) | variance of one draw (nats²) | variance / VP t-uniform |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['training']} | {r['estimator']} | {r['bits_per_dim']:.4f} ± {r['bits_per_dim_se']:.4f} | "
                     f"{r['nelbo_nats']:.2f} ± {r['nelbo_nats_se']:.2f} | {r['variance']:.4g} ± {r['variance_se']:.2g} | "
                     f"{r['variance'] / ref['variance']:.3f} |")
    vp, learned = m["end_points"]["VP"], m["end_points"]["learned"]
    lines += [
        "",
        "± is one standard error over images. bits/dim: the density bound of the Gaussian decoder (mean x̂_0 at eps, "
        "variance σ²/α²) at the data points, −(log p + D ln 2)/(D ln 2) + 8 (not dequantised). The two estimators "
        "of one model share their mean; \"t uniform\" is what each schedule trains with (VDM), \"λ uniform\" is "
        "`continuous_elbo`'s (its variance does not depend on the schedule's interior).",
        "",
        f"End points γ(eps), γ(T) = −log SNR: VP {vp[0]:.3f}, {vp[1]:.3f}; learned {learned[0]:.3f}, {learned[1]:.3f}.",
        "",
    ]
    return "\n".join(lines)


def plot(report: Dict[str, Any], path: Path) -> None:
    """γ(t) = −log SNR of the VP schedule, the initial and the trained learned schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["schedules"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, style in (("VP, t uniform", "-"), ("initial learned", ":"), ("learned", "--")):
        label = {"VP, t uniform": "VP (fixed)", "initial learned": "learned, at initialisation"}.get(name, "learned, trained")
        ax.plot(curves["t"], curves[name], style, label=label)
    ax.set_xlabel("t")
    ax.set_ylabel("γ(t) = −log SNR")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"noise schedules after {report['meta']['settings']['steps']} steps (digits)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 training steps, 16 held-out images, 2 draws")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for learned_schedule.md/.json/.png (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=0, help=f"training steps per run (default {FULL['steps']}, 4 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of initial weights, training and scoring (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own setting)")
    return parser


build_parser, main = entry_points(add_arguments, run, __doc__, "sde-diffusion bench learned_schedule")


if __name__ == "__main__":
    sys.exit(main())
