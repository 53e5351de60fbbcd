"""Likelihood benchmark: network evaluations (NFE) to a given accuracy of log p through the probability-flow ODE,
the package's solver against torchdiffeq and score_sde's setting; bits/dim of a digits model by three routes.

(a) Exact-score Gaussian mixtures under VPSDE(0.1, 20), eps = 1e-3: eight Gaussians in 2-D and the rotated
anisotropic 16-D mixture of :mod:`.problems`, x drawn from the data. The error of a solve is
|Δ + log p_T(z) − log p_t0(x)| in nats (closed forms, so no reference solve; the prior's gap does not enter),
max and mean over the batch. Methods, each over a sweep of rtol = atol: ours (``method="unipc"``:
:mod:`sde_diffusion.likelihood_solver`), torchdiffeq dopri5 in t, and score_sde's setting: scipy
``solve_ivp(method="RK45")`` in t on the flattened (x, Δ) state (score_sde's ``likelihood.py``; its default
rtol = atol = 1e-5), with the exact divergence and with one Rademacher Hutchinson probe per sample, held fixed
along the path. For the Hutchinson runs the truth is the same-probe solution (scipy DOP853 at 1e-10).
Headline: the NFE at which the max error falls to 1e-3 nats (log–log interpolation of the sweep), ours / score_sde's.

(b) With ``--checkpoint`` (a model on a DiscreteVPSDE, e.g. ``sde-diffusion train --data digits --sde ddpm``):
bits/dim of the last ``--n`` digits of ``sd.data.load("digits")`` (8-bit values, uniform dequantisation) by the
PF-ODE (Hutchinson, ours at its default tolerance), by the discrete ELBO (discretized decoder) and by the
continuous ELBO, each ± a 95 % interval over images; and the wall time per image of the PF-ODE likelihood with
dopri5 and with ours at equal accuracy against a reference on a few images (fixed probes): RK4 between the
schedule's knots (f and g² are constant between them, so the ODE is smooth there) at 1 and 2 substeps per
interval, Richardson-extrapolated (its error estimate: |R₂ − R₁|/15).

Run ``sde-diffusion bench likelihood [--quick] [--checkpoint DIR] [--out DIR]``; writes ``likelihood.md`` and
``likelihood.json`` to ``benchmarks/results/`` (atomically).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .._checks import positive_int
from .._io import write_text
from ..data.gmm import GaussianMixture, eight_gaussians
from ..likelihood import (
    DEFAULT_TOLERANCES,
    _draw_probes,
    _ScoreAndDivergence,
    bits_per_dim_of_logp,
    dequantize,
    log_likelihood,
)
from ..model import ScoreModel
from ..sde import VPSDE, LinearSDE
from ._standalone import entry_points, jsonable, machine, torch_threads
from .problems import anisotropic_mixture

DEFAULT_OUT = "benchmarks/results"
F64 = torch.float64
TARGET_ERROR = 1e-3  #: nats, max over the batch
TARGET_RATIO = 0.5
SCORE_SDE_TOL = 1e-5  #: score_sde's likelihood.py default rtol = atol
REFERENCE_TOL = 1e-10
TOLERANCES = {
    "ours": (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6),
    "dopri5": (1e-3, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7, 1e-8),
    "score_sde": (1e-3, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7, 1e-8),
}
QUICK_TOLERANCES = {"ours": (1e-2, 1e-3, 1e-4), "dopri5": (1e-4, 1e-5, 1e-6), "score_sde": (1e-4, 1e-5, 1e-6)}
METHODS = {"ours": "unipc (ours, in λ)", "dopri5": "torchdiffeq dopri5 (t)", "score_sde": "scipy RK45 (t), score_sde"}


@dataclass
class Solve:
    """One solve of a batch: who, at which tolerance, its cost and its error against the truth (nats)."""

    method: str
    divergence: str  #: "exact" or "hutchinson"
    tol: float
    nfe: int
    seconds: float
    max_error: float
    mean_error: float


# ---------------------------------------------------------------------------------------------
# the solvers compared
# ---------------------------------------------------------------------------------------------
def scipy_likelihood(model: ScoreModel, x: Tensor, probes: Optional[Tensor], rtol: float, atol: float,
                     method: str = "RK45") -> Tuple[Tensor, Tensor, int]:
    """score_sde's likelihood solve: ``solve_ivp(method)`` from eps to T on the flattened (x, Δ) in float64,
    dΔ/dt = ∇·h (exact, or εᵀ(∂h/∂x)ε with the fixed ``probes``). Returns (z, Δ(T), NFE = ``sol.nfev``)."""
    from scipy.integrate import solve_ivp

    sde, shape, n = model.sde, x.shape, x[0].numel() * x.shape[0]
    evaluate = _ScoreAndDivergence(model, probes, x.dtype, None, float(sde.eps), float(sde.T))
    dim = x[0].numel()

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        t64 = torch.tensor(min(max(t, float(sde.eps)), float(sde.T)), dtype=F64)
        state = torch.from_numpy(y[:n]).reshape(shape)
        score, div, _ = evaluate(state, float(t64))
        f, g2 = float(sde._f(t64)), float(sde._g2(t64))
        return np.concatenate([(f * state - 0.5 * g2 * score).reshape(-1).numpy(), (f * dim - 0.5 * g2 * div).numpy()])

    y0 = np.concatenate([x.detach().double().reshape(-1).numpy(), np.zeros(shape[0])])
    with torch.no_grad():
        sol = solve_ivp(rhs, (float(sde.eps), float(sde.T)), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"scipy {method} likelihood solve failed: {sol.message}")
    end = sol.y[:, -1]
    return torch.from_numpy(end[:n].copy()).reshape(shape), torch.from_numpy(end[n:].copy()), int(sol.nfev)


def solve(method: str, model: ScoreModel, x: Tensor, tol: float,
          probe_seed: Optional[int]) -> Tuple[Tensor, Tensor, int, float]:
    """(z, Δ, NFE, seconds) of one solve by ``method`` ∈ {"ours", "dopri5", "score_sde"}: exact divergence, or with
    ``probe_seed`` the Hutchinson estimate with the probes :func:`fixed_probes` draws (the same for every method)."""
    start = time.perf_counter()
    if method == "score_sde":
        probes = None if probe_seed is None else fixed_probes(x, probe_seed)
        z, delta, nfe = scipy_likelihood(model, x, probes, tol, tol)
    else:
        res = _log_likelihood(model, x, method, tol, probe_seed)
        z, delta, nfe = res.z, res.delta_logp, res.nfe
    return z, delta, nfe, time.perf_counter() - start


def _log_likelihood(model: ScoreModel, x: Tensor, method: str, tol: float, probe_seed: Optional[int]):
    generator = None if probe_seed is None else torch.Generator().manual_seed(probe_seed)
    return log_likelihood(model, x, exact_divergence=probe_seed is None, method="unipc" if method == "ours" else "dopri5",
                          rtol=tol, atol=tol, generator=generator)


def fixed_probes(x: Tensor, seed: int) -> Tensor:
    """One Rademacher probe per sample, (1, *x.shape): what log_likelihood draws first from ``Generator().manual_seed(seed)``."""
    return _draw_probes("rademacher", 1, x, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# (a) exact-score mixtures
# ---------------------------------------------------------------------------------------------
def gmm_problems(quick: bool, seed: int) -> Dict[str, Tuple[GaussianMixture, LinearSDE, Tensor, str]]:
    n = 16 if quick else 64
    problems = {"gmm2d": (eight_gaussians(), "eight Gaussians (radius 2, std 0.2), 2-D")}
    if not quick:
        problems["gmm16d"] = (anisotropic_mixture(dim=16, seed=seed),
                              "4 Gaussians, 16-D, random rotations, covariance eigenvalues 1e-3…1")
    out = {}
    for k, (name, (gmm, text)) in enumerate(problems.items()):
        x = gmm.sample(n, torch.Generator().manual_seed(seed + 100 + k), dtype=F64)
        out[name] = (gmm, VPSDE(0.1, 20.0, eps=1e-3), x, text)
    return out


def sweep(gmm: GaussianMixture, sde: LinearSDE, x: Tensor, tolerances: Dict[str, Sequence[float]], seed: int,
          log=print) -> List[Solve]:
    """Every method at every tolerance, exact divergence (error vs closed form) and Hutchinson (vs same-probe reference)."""
    model = gmm.score_model(sde)
    truth_t0 = gmm.marginal_log_prob(x, sde.eps, sde)
    z_ref, d_ref, _ = scipy_likelihood(model, x, fixed_probes(x, seed), REFERENCE_TOL, REFERENCE_TOL, method="DOP853")
    hutchinson_truth = d_ref + gmm.marginal_log_prob(z_ref, sde.T, sde)
    rows = []
    for divergence, p in (("exact", None), ("hutchinson", seed)):
        for method, tols in tolerances.items():
            for tol in tols:
                z, delta, nfe, seconds = solve(method, model, x, tol, p)
                logp = delta + gmm.marginal_log_prob(z, sde.T, sde)
                err = (logp - (truth_t0 if p is None else hutchinson_truth)).abs()
                rows.append(Solve(method, divergence, tol, nfe, seconds, float(err.max()), float(err.mean())))
                log(f"  {divergence:10s} {method:9s} tol {tol:.0e}: NFE {nfe:5d}, max error {float(err.max()):.2e}")
    return rows


def nfe_to_reach(points: Sequence[Tuple[int, float]], target: float = TARGET_ERROR) -> Optional[float]:
    """NFE from which on the error stays ≤ target: log–log interpolation between the last (NFE, error) above the
    target and the next point (points sorted by NFE); the first NFE if all are below; None if the last is above."""
    points = sorted(points)
    above = [i for i, (_, e) in enumerate(points) if e > target]
    if not above:
        return float(points[0][0])
    i = above[-1]
    if i == len(points) - 1:
        return None
    (n1, e1), (n2, e2) = points[i], points[i + 1]
    if n2 == n1 or e2 <= 0:
        return float(n2)
    frac = (math.log(target) - math.log(e1)) / (math.log(e2) - math.log(e1))
    return math.exp(math.log(n1) + frac * (math.log(n2) - math.log(n1)))


def summarize(rows: List[Solve]) -> Dict[str, Any]:
    """Per divergence: NFE to reach the target per method, ours/score_sde's ratio, and score_sde's own setting."""
    out: Dict[str, Any] = {}
    for divergence in ("exact", "hutchinson"):
        mine = [r for r in rows if r.divergence == divergence]
        reach = {m: nfe_to_reach([(r.nfe, r.max_error) for r in mine if r.method == m]) for m in METHODS}
        setting = next((r for r in mine if r.method == "score_sde" and r.tol == SCORE_SDE_TOL), None)
        at_setting = None
        if setting is not None:
            at_setting = {"nfe": setting.nfe, "max_error": setting.max_error,
                          "ours_nfe_to_that_error": nfe_to_reach([(r.nfe, r.max_error) for r in mine if r.method == "ours"],
                                                                 setting.max_error)}
        ratio = reach["ours"] / reach["score_sde"] if reach["ours"] and reach["score_sde"] else None
        out[divergence] = {"nfe_to_target": reach, "ratio_ours_to_score_sde": ratio,
                           "ratio_ours_to_dopri5": reach["ours"] / reach["dopri5"] if reach["ours"] and reach["dopri5"] else None,
                           "score_sde_setting": at_setting}
    return out


# ---------------------------------------------------------------------------------------------
# (b) digits
# ---------------------------------------------------------------------------------------------
def digits_images(n: int) -> Tensor:
    """The last n digits of ``sd.data.load("digits")`` as 8-bit values (B, 1, 8, 8)."""
    from ..data import load, to_unit

    x = load("digits").x
    return torch.round(to_unit(x[-n:]) * 255).to(torch.uint8)


def _interval(values: Tensor) -> Tuple[float, float]:
    v = values.double()
    return float(v.mean()), 1.96 * float(v.std()) / math.sqrt(len(v)) if len(v) > 1 else math.nan


def digits_bits_per_dim(model: ScoreModel, images: Tensor, seed: int, batch: int, t_samples: int, log=print) -> Dict[str, Any]:
    """bits/dim ± 95 % CI over images by the PF-ODE (Hutchinson, ours, default tolerance), the discrete ELBO and the
    continuous ELBO. Dequantisation noise, probes and ELBO noise from generators seeded ``seed``…"""
    from ..elbo import continuous_elbo, discrete_elbo

    dim = images[0].numel()
    g_deq, g_probe = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    ode, nfe, seconds = [], [], 0.0
    for i in range(0, len(images), batch):
        x = 2.0 * dequantize(images[i:i + batch], g_deq) - 1.0
        start = time.perf_counter()
        res = log_likelihood(model, x, exact_divergence=False, generator=g_probe)
        seconds += time.perf_counter() - start
        ode.append(bits_per_dim_of_logp(res.logp, dim))
        nfe.append(res.nfe)
        log(f"  PF-ODE bits/dim, images {i}–{i + len(x) - 1}: NFE {res.nfe}, {time.perf_counter() - start:.0f} s")
    ode_bpd = torch.cat(ode)
    grid = images.float() / 255.0 * 2.0 - 1.0  # the 256-level grid in [−1, 1], in the net's dtype
    start = time.perf_counter()
    terms = discrete_elbo(model, grid, decoder="discretized", generator=torch.Generator().manual_seed(seed + 2))
    discrete_seconds = time.perf_counter() - start
    x_deq = 2.0 * dequantize(images, torch.Generator().manual_seed(seed)) - 1.0  # the PF-ODE's first draws
    start = time.perf_counter()
    cont = continuous_elbo(model, x_deq, t_samples=t_samples, generator=torch.Generator().manual_seed(seed + 3))
    continuous_seconds = time.perf_counter() - start
    cont_bpd = bits_per_dim_of_logp(-cont.total, dim)
    rows = {
        "PF-ODE (Hutchinson, ours)": (*_interval(ode_bpd), f"NFE per batch {nfe}", seconds),
        "discrete ELBO (discretized decoder)": (*_interval(terms.bits_per_dim), f"{terms.terms.shape[1] - 1} steps", discrete_seconds),
        "continuous ELBO": (*_interval(cont_bpd), f"{t_samples} t-draws per image, mean MC s.e. "
                                                  f"{float(cont.stderr.mean()) / (dim * math.log(2)):.3g} bits/dim", continuous_seconds),
    }
    return {name: {"bits_per_dim": m, "ci95": ci, "note": note, "seconds": s} for name, (m, ci, note, s) in rows.items()}


def knot_rk4_logp(model: ScoreModel, x: Tensor, probes: Optional[Tensor], substeps: int) -> Tuple[Tensor, int]:
    """log p_t0(x) (prior + Δ) by classical RK4 on each interval between consecutive DDPM step times, where f and
    g² of a DiscreteVPSDE are constant; ``substeps`` RK4 steps per interval. Returns (logp, NFE)."""
    sde = model.sde
    n_steps, dim = sde.num_steps, x[0].numel()
    evaluate = _ScoreAndDivergence(model, probes, x.dtype, None, float(sde.eps), float(sde.T))
    knots = [(i + 1) / n_steps for i in range(n_steps)]
    y, delta = x.detach().double(), torch.zeros(x.shape[0], dtype=F64)
    with torch.no_grad():
        for a, b in zip(knots[:-1], knots[1:]):
            mid = torch.tensor(0.5 * (a + b), dtype=F64)
            f, g2 = float(sde._f(mid)), float(sde._g2(mid))

            def rhs(t: float, state: Tensor) -> Tuple[Tensor, Tensor]:
                score, div, _ = evaluate(state, t)
                return f * state - 0.5 * g2 * score, f * dim - 0.5 * g2 * div

            h = (b - a) / substeps
            for k in range(substeps):
                t = a + k * h
                k1 = rhs(t, y)
                k2 = rhs(t + h / 2, y + h / 2 * k1[0])
                k3 = rhs(t + h / 2, y + h / 2 * k2[0])
                k4 = rhs(t + h, y + h * k3[0])
                y = y + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
                delta = delta + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    return sde.prior_logp(y) + delta, evaluate.calls


def digits_wall_time(model: ScoreModel, images: Tensor, seed: int, tolerances: Dict[str, Sequence[float]],
                     target: float, quick: bool, log=print) -> Dict[str, Any]:
    """Per method and tolerance: NFE, seconds per image and max error vs the knot-wise RK4 reference (same probes);
    then, per method, the loosest tolerance whose error is ≤ ``target`` nats and its time per image."""
    x = 2.0 * dequantize(images, torch.Generator().manual_seed(seed)) - 1.0
    probes = fixed_probes(x, seed + 1)  # what _log_likelihood(…, probe_seed=seed + 1) uses
    start = time.perf_counter()
    ref, ref_nfe = knot_rk4_logp(model, x, probes, 1)
    check = None
    if not quick:  # Richardson: RK4's error falls 16× from 1 to 2 substeps
        ref2, _ = knot_rk4_logp(model, x, probes, 2)
        ref, check = ref2 + (ref2 - ref) / 15.0, float((ref2 - ref).abs().max()) / 15.0
    log(f"  reference (RK4 between knots): NFE {ref_nfe} per substep, error estimate {check}, {time.perf_counter() - start:.0f} s")
    rows = []
    for method, tols in tolerances.items():
        for tol in tols:
            start = time.perf_counter()
            res = _log_likelihood(model, x, method, tol, seed + 1)
            seconds = time.perf_counter() - start
            err = (res.logp - ref).abs()
            rows.append(Solve(method, "hutchinson", tol, res.nfe, seconds / len(x), float(err.max()), float(err.mean())))
            log(f"  digits {method:7s} tol {tol:.0e}: NFE {res.nfe:5d}, {seconds / len(x):.2f} s/image, max error {float(err.max()):.2e}")
    equal = {}
    for method in tolerances:
        ok = [r for r in rows if r.method == method and r.max_error <= target]
        best = max(ok, key=lambda r: r.tol) if ok else None
        equal[method] = asdict(best) if best else None
    ratio = None
    if equal.get("ours") and equal.get("dopri5"):
        ratio = equal["ours"]["seconds"] / equal["dopri5"]["seconds"]
    return {"images": len(x), "target_nats": target, "reference_nfe": ref_nfe, "reference_check": check,
            "rows": [asdict(r) for r in rows], "at_target": equal, "time_ratio_ours_to_dopri5": ratio}


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, command: str, log=print) -> Dict[str, Any]:
    """Measure and write likelihood.md/.json (torch's thread count is restored afterwards)."""
    with torch_threads(args.threads or torch.get_num_threads()):
        return _run(args, command, log)


def _run(args: argparse.Namespace, command: str, log) -> Dict[str, Any]:
    quick, seed, where = bool(args.quick), int(args.seed), machine()
    tolerances = QUICK_TOLERANCES if quick else TOLERANCES
    start = time.perf_counter()
    gmm_report = {}
    for name, (gmm, sde, x, text) in gmm_problems(quick, seed).items():
        log(f"{name}: {text}, {len(x)} points")
        rows = sweep(gmm, sde, x, tolerances, seed, log)
        gmm_report[name] = {"description": text, "n": len(x), "dim": gmm.dim, "sde": repr(sde),
                            "rows": [asdict(r) for r in rows], "summary": summarize(rows)}
    out = Path(args.out)
    digits_report = None
    if args.checkpoint:
        _write(out, _report(command, where, quick, seed, start, gmm_report, None))  # the mixtures' part, kept if (b) fails
        from ..training import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        n = positive_int(args.n, "--n")
        log(f"digits: {ckpt.path} (step {ckpt.step}), last {n} images")
        images = digits_images(n)
        bpd = digits_bits_per_dim(ckpt.model, images, seed, positive_int(args.batch_size, "--batch-size"),
                                  8 if quick else 64, log)
        wall = digits_wall_time(ckpt.model, images[-(2 if quick else args.time_images):], seed + 10,
                                {"dopri5": (1e-3, 1e-4) if quick else (1e-3, 1e-4, 1e-5, 1e-6),
                                 "ours": (1e-2, 1e-3) if quick else (1e-2, 3e-3, 1e-3, 1e-4, 1e-5)},
                                args.digits_target, quick, log)
        digits_report = {"checkpoint": str(ckpt.path), "step": ckpt.step, "sde": repr(ckpt.model.sde),
                         "n": n, "bits_per_dim": bpd, "wall_time": wall}
    report = _report(command, where, quick, seed, start, gmm_report, digits_report)
    _write(out, report)
    log(f"wrote {out / 'likelihood.md'}, {out / 'likelihood.json'}")
    return report


def _report(command: str, where: str, quick: bool, seed: int, start: float, gmm_report: Dict, digits_report: Optional[Dict]) -> Dict:
    meta = {"command": command, "machine": where, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "quick": quick, "seed": seed, "target_error": TARGET_ERROR, "target_ratio": TARGET_RATIO,
            "score_sde_tol": SCORE_SDE_TOL, "default_tolerances": DEFAULT_TOLERANCES,
            "seconds": time.perf_counter() - start}
    return {"meta": meta, "gmm": gmm_report, "digits": digits_report}


def _write(out: Path, report: Dict) -> None:
    write_text(out / "likelihood.json", json.dumps(jsonable(report), indent=1) + "\n")
    write_text(out / "likelihood.md", markdown(report))


def _fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def markdown(report: Dict[str, Any]) -> str:
    m = report["meta"]
    lines = [
        "# Likelihood through the probability-flow ODE: NFE to accuracy, and bits/dim of a digits model",
        "",
        f"Produced by `{m['command']}` on {m['machine']} (torch {m['torch']}, {m['threads']} thread(s)), "
        f"{m['seconds']:.0f} s.",
        "",
        "## (a) Exact-score mixtures: NFE to reach a max error of 1e-3 nats",
        "",
        "Error = |Δ + log p_T(z) − log p_t0(x)| (closed forms; exact divergence) or the gap to the same-probe solution "
        "(scipy DOP853 at 1e-10; one Rademacher probe per sample), max over the batch. NFE = batched network evaluations; "
        "each method swept over rtol = atol, the NFE to the target read off by log–log interpolation. "
        f"score_sde's setting is scipy RK45 in t on the flattened (x, Δ), its default rtol = atol = {m['score_sde_tol']:g}.",
        "",
        "| problem | divergence | ours | dopri5 (t) | score_sde RK45 (t) | ours / score_sde | ours / dopri5 | "
        "score_sde at 1e-5: NFE, max error | ours to that error |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, p in report["gmm"].items():
        for div, s in p["summary"].items():
            reach, at = s["nfe_to_target"], s["score_sde_setting"] or {}
            lines.append(f"| {name} | {div} | {_fmt(reach['ours'])} | {_fmt(reach['dopri5'])} | {_fmt(reach['score_sde'])} | "
                         f"{_fmt(s['ratio_ours_to_score_sde'], '.2f')} | {_fmt(s['ratio_ours_to_dopri5'], '.2f')} | "
                         f"{at.get('nfe', '—')}, {_fmt(at.get('max_error'), '.1e')} | {_fmt(at.get('ours_nfe_to_that_error'))} |")
    ratios = [s["ratio_ours_to_score_sde"] for p in report["gmm"].values() for s in p["summary"].values()
              if s["ratio_ours_to_score_sde"] is not None]
    met = "met" if ratios and max(ratios) <= m["target_ratio"] else "not met"
    span = f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "—"
    lines += ["", f"Target: ours / score_sde ≤ {m['target_ratio']} at {m['target_error']:g} nats: {met} (measured {span}). "
              f"Default tolerances of `sd.log_likelihood`: {m['default_tolerances']}.", ""]
    for name, p in report["gmm"].items():
        lines += [f"### {name}: {p['description']}, {p['n']} points, {p['sde']}", "",
                  "| divergence | method | rtol = atol | NFE | max error | mean error | s |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in p["rows"]:
            lines.append(f"| {r['divergence']} | {METHODS[r['method']]} | {r['tol']:.0e} | {r['nfe']} | {r['max_error']:.2e} | "
                         f"{r['mean_error']:.2e} | {r['seconds']:.2f} |")
        lines.append("")
    d = report["digits"]
    if d is None:
        lines += ["## (b) Digits", "", "Not run: pass `--checkpoint DIR` (a DiscreteVPSDE model, e.g. "
                  "`sde-diffusion train --data digits --sde ddpm`).", ""]
        return "\n".join(lines)
    w = d["wall_time"]
    lines += [
        f"## (b) Digits: {d['checkpoint']} (step {d['step']}), {d['sde']}",
        "",
        f"bits/dim of the last {d['n']} digits of `sd.data.load(\"digits\")` (8-bit values; the CLI's `train --data digits` "
        "trains on all 1,797 digits, so these images are *not* held out from that training). ± = 95 % interval over images.",
        "",
        "| route | bits/dim | ± | note | s |",
        "|---|---:|---:|---|---:|",
    ]
    for name, r in d["bits_per_dim"].items():
        lines.append(f"| {name} | {r['bits_per_dim']:.4f} | {_fmt(r['ci95'], '.4f')} | {r['note']} | {r['seconds']:.0f} |")
    lines += [
        "",
        f"### Wall time per image at equal accuracy ({w['images']} images, fixed Rademacher probes)",
        "",
        f"Reference: RK4 between the DDPM knots (f, g² constant there), {w['reference_nfe']} NFE per substep, 1 and 2 "
        f"substeps Richardson-extrapolated; error estimate of the 2-substep solve |R₂ − R₁|/15 = "
        f"{_fmt(w['reference_check'], '.1e')} nats. Target: max error ≤ {w['target_nats']:g} nats "
        f"(= {w['target_nats'] / (64 * math.log(2)):.1e} bits/dim for 8×8 images).",
        "",
        "dopri5 steps in t, where a DiscreteVPSDE's f and g² jump at each of its N knots (log α is piecewise linear), "
        "so its error estimate keeps meeting discontinuities; ours steps in λ and takes α, σ exactly.",
        "",
        "| method | rtol = atol | NFE | s / image | max error (nats) | mean error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in w["rows"]:
        lines.append(f"| {METHODS[r['method']]} | {r['tol']:.0e} | {r['nfe']} | {r['seconds']:.2f} | {r['max_error']:.2e} | "
                     f"{r['mean_error']:.2e} |")
    lines.append("")
    for method, r in w["at_target"].items():
        text = (f"rtol = atol = {r['tol']:.0e}: {r['seconds']:.2f} s/image, NFE {r['nfe']}" if r
                else "did not reach the target in the sweep")
        lines.append(f"- {METHODS[method]} at the target: {text}")
    lines += [f"- time ratio ours / dopri5 at equal accuracy: {_fmt(w['time_ratio_ours_to_dopri5'], '.2f')}", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="smoke test: the 2-D mixture only, 16 points, 3 tolerances")
    parser.add_argument("--checkpoint", help="a DiscreteVPSDE digits run (e.g. from `train --data digits --sde ddpm`) "
                                             "for part (b); without it only the mixtures are measured")
    parser.add_argument("--n", type=int, default=100, help="digits scored for bits/dim (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=50, help="digits per PF-ODE solve (default %(default)s)")
    parser.add_argument("--time-images", type=int, default=4, help="digits for the wall-time comparison (default %(default)s)")
    parser.add_argument("--digits-target", type=float, default=0.1,
                        help="max error in nats for 'equal accuracy' on digits (default %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for likelihood.md/.json (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of points, probes and dequantisation (default %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own setting)")
    return parser


build_parser, main = entry_points(add_arguments, run, __doc__, "sde-diffusion bench likelihood")


if __name__ == "__main__":
    sys.exit(main())
