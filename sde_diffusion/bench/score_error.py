"""Learned-vs-exact score: how far a trained network's score is from the true ∇ log p_t, per noise level.

On a Gaussian mixture the noised marginals p_t are known in closed form, so the error of a trained
ε-network can be measured exactly instead of through sample statistics. With ε* = −σ_t ∇ log p_t = E[ε | x_t]:

    e(t) = E_{x_t ~ p_t} ‖s_θ(x_t, t) − ∇ log p_t(x_t)‖² σ_t² = E ‖ε_θ(x_t, t) − ε*(x_t, t)‖²    (‖·‖²: sum over dims)

with x_t = α_t x_0 + σ_t ε drawn from the exact marginal (x_0 from the mixture). The relative error
e(t)/E‖ε*‖² is 1 for a network that outputs 0. Because ε* is the conditional mean of ε, the ε-weighted
DSM loss (Ho et al. 2020; Vincent 2011) splits into the exact model's loss plus the score error:

    L(θ) = E‖ε_θ − ε‖²/D = L(exact) + 1/(D (T − eps)) ∫_eps^T e(t) dt,

so the exact model's loss is the minimum and the gap is the time-averaged score error (D = data dimension).

The benchmark trains ``sd.nets.MLP(dim=2)`` with the toy preset (:data:`~sde_diffusion.training.presets.TOY`) on
samples of :func:`~sde_diffusion.data.eight_gaussians` under the VP SDE, then reports e(t) on a log-spaced
grid of t for the EMA and the raw network, the held-out DSM losses of the exact and the trained model (with
the gap beside ∫ e), and MMD² / sliced W2 to fresh data of samples of both models drawn with the same sampler
from the same x_T (DPM-Solver++ 2M, 20 steps; Euler–Maruyama, 500 steps), next to the data-vs-data floor.

Run ``sde-diffusion bench score_error [--quick] [--out DIR]``; writes ``score_error.md``, ``score_error.json`` and
``score_error.png`` (e(t) and e(t)/E‖ε*‖², log scale).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .. import samplers
from .._checks import check_finite, positive_int
from ._standalone import entry_points
from .._io import atomic_path, write_text
from ..data import Dataset, eight_gaussians
from ..losses import dsm_loss
from ..metrics import mmd, sliced_wasserstein
from ..model import ScoreModel
from ..sde import LinearSDE, randn

DEFAULT_OUT = "benchmarks/results"
F64 = torch.float64


def comparison_samplers(quick: bool = False) -> List[Tuple[str, samplers.Sampler]]:
    """A fast deterministic solver and the classic reverse-SDE discretisation (fewer EM steps with ``quick``)."""
    em_steps = 100 if quick else 500
    return [("DPM-Solver++ 2M (20 steps)", samplers.DPMSolver(steps=20, order=2)),
            (f"Euler–Maruyama ({em_steps} steps)", samplers.EulerMaruyama(steps=em_steps))]


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreErrorCurve:
    """e(t) = E‖ε_θ − ε*‖² and E‖ε*‖² at each time of ``t`` (float64, shape (K,)), with Monte Carlo standard errors.

    ``dim`` is the number of entries per sample (D), ``n`` the samples per time.
    """

    t: Tensor
    error: Tensor
    error_stderr: Tensor
    exact_norm: Tensor
    exact_norm_stderr: Tensor
    dim: int
    n: int

    @property
    def relative(self) -> Tensor:
        """e(t)/E‖ε*‖²: 1 for a network that predicts ε = 0, 0 for the exact score."""
        return self.error / self.exact_norm

    def loss_gap(self) -> float:
        """1/(D (T − eps)) ∫ e(t) dt over the grid's span by the trapezoid rule: the predicted DSM-loss gap
        L(θ) − L(exact) when the grid runs from eps to T."""
        span = float(self.t[-1] - self.t[0])
        if len(self.t) < 2 or span <= 0:
            raise ValueError("loss_gap needs a grid of at least two increasing times")
        return float(torch.trapezoid(self.error, self.t)) / (self.dim * span)


def _check_models(model: ScoreModel, exact: ScoreModel) -> None:
    for name, value in (("model", model), ("exact", exact)):
        if not isinstance(value, ScoreModel):
            raise TypeError(f"{name} must be a sde_diffusion.ScoreModel, got {type(value).__name__}")


def _same_schedule(model: ScoreModel, exact: ScoreModel, t64: Tensor) -> None:
    """The two models must share α(t), σ(t): the error is only defined against the same noised marginals."""
    for name in ("_log_alpha", "_log_sigma"):
        a, b = getattr(model.sde, name)(t64), getattr(exact.sde, name)(t64)
        if not torch.allclose(a, b, rtol=1e-9, atol=1e-12):
            raise ValueError(f"model and exact must use the same SDE schedule; they differ at t in {t64.tolist()[:3]}…: "
                             f"{model.sde!r} vs {exact.sde!r}")


def _check_data(x0: Tensor) -> None:
    if not isinstance(x0, Tensor) or not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor of clean samples (n, ...), got {type(x0).__name__}")
    if x0.dim() < 2 or x0.shape[0] < 2:
        raise ValueError(f"x0 must have shape (n >= 2, ...), got {tuple(x0.shape)}")
    check_finite(x0, "x0")


def time_grid(sde: LinearSDE, points: int = 30) -> Tensor:
    """``points`` times from sde.eps to sde.T, evenly spaced in log t (dense near eps, where e(t) changes fastest)."""
    points = positive_int(points, "points")
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    grid = torch.logspace(math.log10(sde.eps), math.log10(sde.T), points, dtype=F64)
    grid[0], grid[-1] = sde.eps, sde.T  # exact end points (10**log10(x) may round past them)
    return grid


@torch.no_grad()
def score_error(model: ScoreModel, exact: ScoreModel, x0: Tensor, t: Tensor,
                generator: Optional[torch.Generator] = None, model_kwargs: Optional[Dict[str, Any]] = None) -> ScoreErrorCurve:
    """e(t) = E‖ε_θ(x_t, t) − ε*(x_t, t)‖² (sum over dims) at every time of ``t``, x_t = α x0 + σ ε from ``exact.sde``.

    ``exact`` is the ground truth (e.g. ``GaussianMixture.score_model(sde)``) and ``x0`` clean samples of its data.
    Each time draws fresh noise ``randn(x0.shape, generator)`` (in the order of ``t``); both models see the same x_t.
    """
    _check_models(model, exact)
    _check_data(x0)
    t64 = exact.sde._time(t, "t")
    if t64.dim() != 1 or t64.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-d tensor of times, got shape {tuple(t64.shape)}")
    _same_schedule(model, exact, t64)
    n, kwargs = x0.shape[0], model_kwargs or {}
    rows = []
    for tk in t64.tolist():
        x_t = exact.sde.perturb(x0, tk, randn(x0.shape, generator, x0.device, x0.dtype))
        eps_exact = exact.eps(x_t, tk, **kwargs).to(F64).reshape(n, -1)
        eps_model = model.eps(x_t, tk, **kwargs).to(F64).reshape(n, -1)
        err = (eps_model - eps_exact).pow(2).sum(1)
        norm = eps_exact.pow(2).sum(1)
        rows.append([err.mean(), err.std() / math.sqrt(n), norm.mean(), norm.std() / math.sqrt(n)])
    cols = torch.tensor(rows, dtype=F64).T
    return ScoreErrorCurve(t64, cols[0], cols[1], cols[2], cols[3], dim=x0[0].numel(), n=n)


@torch.no_grad()
def paired_dsm_losses(models: Dict[str, ScoreModel], x0: Tensor, generator: Optional[torch.Generator] = None,
                      reference: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Held-out ε-weighted DSM loss of each model on ``x0`` with the *same* t (stratified) and noise for all.

    Returns per model {"loss", "stderr"}; with ``reference`` (a key of ``models``) also "gap" = L(model) − L(reference)
    and its paired standard error "gap_stderr" (the shared draws cancel most of the Monte Carlo noise).
    """
    if not models:
        raise ValueError("models must name at least one ScoreModel")
    for name, model in models.items():
        if not isinstance(model, ScoreModel):
            raise TypeError(f"models[{name!r}] must be a sde_diffusion.ScoreModel, got {type(model).__name__}")
    if reference is not None and reference not in models:
        raise ValueError(f"reference must be one of {sorted(models)}, got {reference!r}")
    _check_data(x0)
    first, n = next(iter(models.values())), x0.shape[0]
    sde = first.sde
    for model in models.values():
        _same_schedule(model, first, torch.tensor([sde.eps, 0.5 * (sde.eps + sde.T), sde.T], dtype=F64))
    u0 = torch.rand(1, generator=generator, dtype=F64)
    t = sde.eps + (sde.T - sde.eps) * ((u0 + torch.arange(n, dtype=F64) / n) % 1)
    noise = randn(x0.shape, generator, x0.device, x0.dtype)
    per_sample = {name: dsm_loss(m, x0, "eps", t=t, noise=noise, reduction="none").double() for name, m in models.items()}
    out = {name: {"loss": float(v.mean()), "stderr": float(v.std() / math.sqrt(n))} for name, v in per_sample.items()}
    if reference is not None:
        for name, v in per_sample.items():
            diff = v - per_sample[reference]
            out[name].update(gap=float(diff.mean()), gap_stderr=float(diff.std() / math.sqrt(n)))
    return out


@dataclass
class ToyTraining:
    """A finished toy run: the model with the raw and with the EMA weights, the wall time and the last log record."""

    model: ScoreModel
    ema_model: ScoreModel
    seconds: float
    steps: int
    record: Dict[str, float]
    config: Dict[str, Any]


def train_toy_model(x: Tensor, seed: int = 0, **overrides: Any) -> ToyTraining:
    """Train ``sd.nets.MLP`` on vectors ``x`` (n, D) with the toy preset (VP SDE, ε-prediction), in memory.

    ``overrides`` replace preset :class:`~sde_diffusion.training.TrainConfig` fields (e.g. ``steps=300``).
    """
    from ..nets import build
    from ..training import TrainConfig, Trainer, build_sde
    from ..training.presets import TOY, net_config

    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a tensor of vectors (n, D), got {getattr(x, 'shape', type(x).__name__)}")
    settings = {**TOY["train"], "progress": False, "checkpoint_every": 0, "seed": int(seed), **overrides}
    config = TrainConfig(**settings)
    torch.manual_seed(config.seed)
    net = build(net_config(TOY["net"], x.shape[1:]))
    model = ScoreModel(net, build_sde({"name": TOY["sde"]}), prediction=TOY["prediction"])
    trainer = Trainer(model, Dataset(x=x, name="toy"), config)
    start = time.perf_counter()
    record = trainer.fit()
    seconds = time.perf_counter() - start
    trainer.net.eval()
    return ToyTraining(model, trainer.ema_model(), seconds, config.steps, record, settings)


@torch.no_grad()
def sample_quality(models: Dict[str, ScoreModel], data: Tensor, floor_data: Tensor, quick: bool, seed: int) -> Dict[str, Any]:
    """MMD² and sliced W2 to ``data`` of each model's samples, per sampler, all from the same x_T and noise seed.

    ``floor_data`` (independent data of the same size) gives the data-vs-data floor; "rms_to_reference" is the
    RMS distance between a model's samples and the first model's, sample by sample (same x_T).
    """
    n, sde = data.shape[0], next(iter(models.values())).sde
    proj = lambda: torch.Generator().manual_seed(seed + 3)  # noqa: E731  (the same projections for every row)
    floor = {"mmd": mmd(floor_data, data), "sliced_w2": sliced_wasserstein(floor_data, data, generator=proj())}
    x_T = sde.prior_sample((n, data.shape[1]), torch.Generator().manual_seed(seed + 2))
    rows, first = [], next(iter(models))
    for label, sampler in comparison_samplers(quick):
        outs = {}
        for name, model in models.items():
            start = time.perf_counter()
            out = sampler.sample(model, x_T=x_T, generator=torch.Generator().manual_seed(seed + 4))
            outs[name] = out.x
            rows.append({"sampler": label, "model": name, "nfe": out.nfe, "seconds": time.perf_counter() - start,
                         "mmd": mmd(out.x, data), "sliced_w2": sliced_wasserstein(out.x, data, generator=proj()),
                         "rms_to_reference": float((out.x - outs[first]).double().pow(2).sum(1).mean().sqrt())})
    return {"floor": floor, "rows": rows, "n": n, "reference": first}


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, command: str, log=print) -> Dict[str, Any]:
    """Train, measure and write the reports (torch's thread count is restored afterwards)."""
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(positive_int(args.threads, "--threads"))
    try:
        return _run(args, command, log)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, command: str, log) -> Dict[str, Any]:
    from ._standalone import machine

    quick, seed = bool(args.quick), int(args.seed)
    where = machine()
    gmm = eight_gaussians()
    train_x = gmm.sample(4_000 if quick else 100_000, torch.Generator().manual_seed(seed))
    overrides = {"steps": 300} if quick else {}
    if args.steps:
        overrides["steps"] = positive_int(args.steps, "--steps")
    trained = train_toy_model(train_x, seed=seed, **overrides)
    log(f"trained the MLP for {trained.steps} steps in {trained.seconds:.1f} s (last logged loss {trained.record.get('loss', math.nan):.4f})")
    sde = trained.model.sde
    exact = gmm.score_model(sde)
    n_curve, n_loss, n_samples = (1024, 8192, 500) if quick else (8192, 65536, 2000)
    grid = time_grid(sde, 12 if quick else 30)
    curve_x0 = gmm.sample(n_curve, torch.Generator().manual_seed(seed + 10))
    curves = {name: score_error(m, exact, curve_x0, grid, generator=torch.Generator().manual_seed(seed + 11))
              for name, m in (("EMA", trained.ema_model), ("raw", trained.model))}
    log(f"score error: mean relative {float(curves['EMA'].relative.mean()):.3g} (EMA) over {len(grid)} times")
    held_out = gmm.sample(n_loss, torch.Generator().manual_seed(seed + 20))
    losses = paired_dsm_losses({"exact score": exact, "trained MLP (EMA)": trained.ema_model, "trained MLP (raw)": trained.model},
                               held_out, generator=torch.Generator().manual_seed(seed + 21), reference="exact score")
    quality = sample_quality({"exact score": exact, "trained MLP (EMA)": trained.ema_model},
                             gmm.sample(n_samples, torch.Generator().manual_seed(seed + 30)),
                             gmm.sample(n_samples, torch.Generator().manual_seed(seed + 31)), quick, seed)
    meta = {"command": command, "machine": where, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "quick": quick, "seed": seed, "sde": repr(sde), "train": trained.config, "train_samples": len(train_x),
            "train_seconds": trained.seconds, "final_logged_loss": trained.record.get("loss"),
            "curve_samples": n_curve, "loss_samples": n_loss, "sample_n": n_samples}
    report = {"meta": meta,
              "score_error": {name: _curve_dict(c) for name, c in curves.items()},
              "loss_gap_from_curve": {name: c.loss_gap() for name, c in curves.items()},
              "dsm_losses": losses, "samples": quality}
    out = Path(args.out)
    write_text(out / "score_error.json", json.dumps(report, indent=1) + "\n")
    write_text(out / "score_error.md", markdown(report))
    plot(report, out / "score_error.png")
    log(f"wrote {out / 'score_error.md'}, {out / 'score_error.json'}, {out / 'score_error.png'}")
    return report


def _curve_dict(c: ScoreErrorCurve) -> Dict[str, List[float]]:
    return {"t": c.t.tolist(), "error": c.error.tolist(), "error_stderr": c.error_stderr.tolist(),
            "exact_norm": c.exact_norm.tolist(), "relative": c.relative.tolist(), "dim": c.dim, "n": c.n}


# ---------------------------------------------------------------------------------------------
# report and figure
# ---------------------------------------------------------------------------------------------
def markdown(report: Dict[str, Any]) -> str:
    m, ema, raw = report["meta"], report["score_error"]["EMA"], report["score_error"]["raw"]
    tr, losses, q = m["train"], report["dsm_losses"], report["samples"]
    rel = ema["relative"]
    worst = max(range(len(rel)), key=rel.__getitem__)
    lines = [
        "# Learned vs exact score (eight Gaussians, VP SDE)",
        "",
        f"Produced by `{m['command']}` on {m['machine']} (torch {m['torch']}, {m['threads']} thread(s)).",
        "",
        f"`sd.nets.MLP(dim=2)` trained with the toy preset ({tr['steps']} steps, batch {tr['batch_size']}, lr {tr['lr']:g}, "
        f"EMA {tr['ema_decay']}) on {m['train_samples']} samples of `eight_gaussians()` in {m['train_seconds']:.1f} s "
        f"(last logged training loss {m['final_logged_loss']:.4f}).",
        "",
        "## Score error e(t) = E‖ε_θ − ε*‖², ε* = −σ ∇log p_t (exact)",
        "",
        f"x_t from the exact marginal ({ema['n']} x_0 per t, fresh noise per t, both nets on the same x_t). Relative = "
        "e(t)/E‖ε*‖² (1 for a net that outputs 0). ± is one Monte Carlo standard error.",
        f"Largest relative error of the EMA net: {rel[worst]:.3g} at t = {ema['t'][worst]:.3g}; mean over the grid "
        f"{sum(rel) / len(rel):.3g}.",
        "",
        "| t | E‖ε*‖² | e(t) EMA | relative EMA | e(t) raw | relative raw |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for k, t in enumerate(ema["t"]):
        lines.append(f"| {t:.4g} | {ema['exact_norm'][k]:.4g} | {ema['error'][k]:.3e} ± {ema['error_stderr'][k]:.1e} | "
                     f"{ema['relative'][k]:.3e} | {raw['error'][k]:.3e} | {raw['relative'][k]:.3e} |")
    gap = report["loss_gap_from_curve"]
    lines += [
        "",
        "## Held-out DSM loss (ε weighting): the exact model's loss is the minimum",
        "",
        f"{m['loss_samples']} held-out x_0, stratified t, the same t and ε for every model. The gap L(θ) − L(exact) should equal "
        "1/(D (T − eps)) ∫ e(t) dt (trapezoid over the grid above).",
        "",
        "| model | DSM loss | gap to exact (paired) | 1/(D(T−eps)) ∫ e(t) dt |",
        "|---|---:|---:|---:|",
    ]
    for name, v in losses.items():
        key = {"trained MLP (EMA)": "EMA", "trained MLP (raw)": "raw"}.get(name)
        integral = f"{gap[key]:.3e}" if key else "0"
        lines.append(f"| {name} | {v['loss']:.5f} ± {v['stderr']:.1e} | {v['gap']:.3e} ± {v['gap_stderr']:.1e} | {integral} |")
    lines += [
        "",
        "## Samples: trained vs exact score, same sampler, same x_T",
        "",
        f"{q['n']} samples per row against {q['n']} fresh data points; MMD² unbiased (RBF mixture, median bandwidth), "
        f"sliced W2 over 256 fixed directions; RMS to exact = per-sample distance to the {q['reference']} model's sample from the same x_T.",
        "",
        "| sampler | model | NFE | MMD² to data | sliced W2 to data | RMS to exact | s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in q["rows"]:
        lines.append(f"| {r['sampler']} | {r['model']} | {r['nfe']} | {r['mmd']:.5f} | {r['sliced_w2']:.4f} | "
                     f"{r['rms_to_reference']:.4f} | {r['seconds']:.2f} |")
    lines += ["", f"Data vs data (floor, same sizes): MMD² {q['floor']['mmd']:.5f}, sliced W2 {q['floor']['sliced_w2']:.4f}.", ""]
    return "\n".join(lines)


def plot(report: Dict[str, Any], path: Path) -> None:
    """Left: e(t) of the EMA and raw nets with E‖ε*‖² (the error of ε_θ = 0); right: e(t)/E‖ε*‖². Log–log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (name, c), color in zip(report["score_error"].items(), ("tab:blue", "tab:orange")):
        t, e, se = c["t"], c["error"], c["error_stderr"]
        left.plot(t, e, marker=".", color=color, label=f"trained MLP ({name})")
        left.fill_between(t, [max(a - 2 * b, 1e-12) for a, b in zip(e, se)], [a + 2 * b for a, b in zip(e, se)],
                          color=color, alpha=0.2, lw=0)
        right.plot(t, c["relative"], marker=".", color=color, label=f"trained MLP ({name})")
    ema = report["score_error"]["EMA"]
    left.plot(ema["t"], ema["exact_norm"], color="k", ls="--", lw=1, label="E‖ε*‖² (error of ε_θ = 0)")
    right.axhline(1.0, color="k", ls="--", lw=1, label="ε_θ = 0")
    left.set_ylabel("e(t) = E‖ε_θ − ε*‖²  (±2 s.e.)")
    right.set_ylabel("e(t) / E‖ε*‖²")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"learned vs exact score, eight Gaussians ({report['meta']['train']['steps']} training steps)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="smoke test: 300 training steps, fewer samples and times (≲ 20 s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for score_error.md/.json/.png (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=0, help="training steps (default: the toy preset's, 300 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of data, training and sampling (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own setting)")
    return parser


build_parser, main = entry_points(add_arguments, run, __doc__, "sde-diffusion bench score_error")


if __name__ == "__main__":
    sys.exit(main())
