"""The solver benchmark: error per network evaluation (NFE) against exact ground truth, peers in the same run.

Problems (no training): exact-score Gaussian mixtures under VPSDE(0.1, 20), eps = 1e-3 —
(a) eight Gaussians in 2-D, (b) a 16-D mixture with rotated anisotropic covariances (eigenvalues
1e-3…1), stiff near t → 0. Every sampler starts from the *same* x_T (k-diffusion from x̃_T = x_T/α_T)
and ends with the Tweedie denoise at eps (σ̃_min), so results compare like with like.

* Deterministic samplers: pathwise RMS error of the final sample against the reference PF-ODE
  solution (scipy DOP853, rtol 1e-10, float64, then the exact x̂_0 at eps), at NFE ≈ 5, 10, 20, 50, …
  (steps chosen to land on or just under each budget; the NFE actually used is recorded).
* Tolerance-driven solvers (adaptive DPM-Solver, k-diffusion's dpm_adaptive, score_sde's RK45, our
  torchdiffeq PF-ODE): (NFE, error) at several tolerances.
* Stochastic samplers: sliced Wasserstein distance to fresh data (with the data-vs-data floor).

Run ``sde-diffusion bench solvers [--quick] [--out DIR]``; writes ``solvers.md``, ``solvers.json`` and
``solvers.png`` to ``benchmarks/results/`` (atomically). Samplers not (yet) registered are skipped with a note.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import samplers
from ._standalone import entry_points, torch_threads
from .._io import atomic_path, write_text
from ..metrics import sliced_wasserstein
from . import peers
from .problems import Problem, counted_score_model, default_problems

DEFAULT_OUT = "benchmarks/results"
FULL_BUDGETS = (5, 10, 20, 50, 100, 200)
QUICK_BUDGETS = (5, 10, 20)
FULL_SDE_BUDGETS = (10, 20, 50, 100, 200, 500)
QUICK_SDE_BUDGETS = (10, 20)
TARGET_ERRORS = (1e-2, 1e-3, 1e-4)
#: issue 3's targets
TARGET_BUDGETS = (10, 20)
TARGET_RATIO = 0.5
TARGET_ADAPTIVE_ERROR = 1e-4
RK45_REFERENCE_TOL = 1e-5

Runner = Callable[[Problem, Any, int], Tuple[Tensor, int, Optional[int]]]


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------
@dataclass
class Method:
    """One sampler configuration. ``kind="fixed"``: param = steps with NFE = per_step·steps + extra;
    ``kind="tolerance"``: param = a (rtol, atol) pair."""

    family: str  #: "ours", "k-diffusion" or "score_sde"
    method: str  #: display name
    schedule: str  #: grid / sigma schedule ("own" where the method fixes it)
    kind: str
    stochastic: bool
    runner: Optional[Runner]
    per_step: int = 1
    extra: int = 1
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.family}:{self.method}:{self.schedule}"

    @property
    def available(self) -> bool:
        return self.runner is not None


def _problem_model(problem: Problem):
    """One counted exact-score model per problem (shared by every sampler)."""
    if "model" not in problem.extra:
        problem.extra["model"], problem.extra["counter"] = counted_score_model(problem.gmm, problem.sde)
    return problem.extra["model"], problem.extra["counter"]


def _ours(name: str, **fixed) -> Optional[Callable[..., Runner]]:
    """A runner factory for the registered sampler ``name`` (None when it is not registered)."""
    cls = samplers.REGISTRY.get(name)
    if cls is None:
        return None

    def factory(param_name: str) -> Runner:
        def run(problem: Problem, param, seed: int):
            model, counter = _problem_model(problem)
            kwargs = dict(fixed)
            if param_name == "steps":
                kwargs["steps"] = int(param)
            else:
                kwargs["rtol"], kwargs["atol"] = param
            sampler = cls(**kwargs)
            before = counter.calls
            out = sampler.sample(model, x_T=problem.x_T.clone(), generator=torch.Generator().manual_seed(seed))
            return out.x, counter.calls - before, out.nfe

        return run

    return factory


def _kdiff_fixed(sampler: str, schedule: str, **kwargs) -> Optional[Runner]:
    if not peers.k_diffusion_available():
        return None

    def run(problem: Problem, steps, seed: int):
        model, _ = _problem_model(problem)
        den = peers.KarrasDenoiser(model)
        s_min, s_max = den.sigma_tilde(problem.sde.eps), den.sigma_tilde(problem.sde.T)
        if sampler == "dpm_fast":
            x, nfe = peers.run_k_diffusion("dpm_fast", model, problem.x_T.clone(), seed=seed, n=int(steps), **kwargs)
        else:
            sigmas = peers.k_diffusion_sigmas(schedule, int(steps), s_min, s_max)
            x, nfe = peers.run_k_diffusion(sampler, model, problem.x_T.clone(), sigmas, seed=seed, **kwargs)
        return x, nfe, None

    return run


def _kdiff_adaptive(**kwargs) -> Optional[Runner]:
    if not peers.k_diffusion_available():
        return None

    def run(problem: Problem, tol, seed: int):
        model, _ = _problem_model(problem)
        x, nfe = peers.run_k_diffusion("dpm_adaptive", model, problem.x_T.clone(), seed=seed,
                                       rtol=tol[0], atol=tol[1], **kwargs)
        return x, nfe, None

    return run


def _score_sde_rk45(problem: Problem, tol, seed: int):
    model, _ = _problem_model(problem)
    x, nfe = peers.run_score_sde_ode(model, problem.x_T.clone(), rtol=tol[0], atol=tol[1])
    return x, nfe, None


def _dpm_label(order: int, multistep: bool, prediction: str, eta: float = 0.0) -> str:
    base = "DPM-Solver++" if prediction == "x0" else "DPM-Solver"
    body = "1" if order == 1 else f"{order}{'M' if multistep else 'S'}"
    return f"{'SDE-' if eta else ''}{base}({body})"


def deterministic_methods() -> List[Method]:
    """Ours on the "log_snr" and "karras" grids; k-diffusion's ODE samplers on Karras (ρ = 7) and exponential sigmas."""
    out: List[Method] = []
    ours_configs: List[Tuple[str, str, Dict[str, Any], int]] = [("ddim", "DDIM", {"eta": 0.0}, 1)]
    for prediction in ("x0", "eps"):
        out_configs = [(1, True)] + [(k, m) for k in (2, 3) for m in (True, False)]
        for order, multistep in out_configs:
            ours_configs.append(("dpm_solver", _dpm_label(order, multistep, prediction),
                                 {"order": order, "multistep": multistep, "prediction": prediction},
                                 1 if multistep else order))
    ours_configs += [
        ("unipc", "UniPC-3 bh2", {"order": 3, "variant": "bh2"}, 1),
        ("unipc", "UniPC-2 bh2", {"order": 2, "variant": "bh2"}, 1),
        ("unipc", "UniPC-3 bh1", {"order": 3, "variant": "bh1"}, 1),
        ("heun", "Heun (EDM)", {}, 2),
    ]
    for grid in ("log_snr", "karras"):
        for name, label, kwargs, per_step in ours_configs:
            factory = _ours(name, grid=grid, **kwargs)
            out.append(Method("ours", label, grid, "fixed", False, factory("steps") if factory else None, per_step, 1,
                              "" if factory else f"sampler {name!r} is not registered"))
    kd_configs = [("euler", "euler", {}, 1), ("heun", "heun", {}, 2), ("dpm_2", "dpm_2", {}, 2), ("lms", "lms", {}, 1),
                  ("dpmpp_2m", "dpmpp_2m", {}, 1), ("dpmpp_3m_sde", "dpmpp_3m_sde(eta=0)", {"eta": 0.0}, 1)]
    for schedule in ("karras", "exponential"):
        for sampler, label, kwargs, per_step in kd_configs:
            run = _kdiff_fixed(sampler, schedule, **kwargs)
            out.append(Method("k-diffusion", label, schedule, "fixed", False, run, per_step, 1,
                              "" if run else "k-diffusion is not installed"))
    run = _kdiff_fixed("dpm_fast", "own")
    out.append(Method("k-diffusion", "dpm_fast", "own (uniform log σ̃)", "fixed", False, run, 1, 1,
                      "" if run else "k-diffusion is not installed"))
    return out


def tolerance_methods() -> List[Method]:
    """Adaptive PF-ODE solvers, swept over tolerances."""
    out: List[Method] = []
    factory = _ours("dpm_solver_adaptive", order=3)
    out.append(Method("ours", "adaptive DPM-Solver-23", "adaptive λ", "tolerance", False,
                      factory("tol") if factory else None,
                      note="" if factory else "sampler 'dpm_solver_adaptive' is not registered"))
    factory = _ours("unipc_adaptive", order=4)
    out.append(Method("ours", "adaptive UniPC-4", "adaptive λ", "tolerance", False,
                      factory("tol") if factory else None,
                      note="" if factory else "sampler 'unipc_adaptive' is not registered"))
    factory = _ours("probability_flow", method="dopri5")
    out.append(Method("ours", "PF-ODE dopri5 (torchdiffeq)", "adaptive t", "tolerance", False,
                      factory("tol") if factory else None))
    run = _kdiff_adaptive(order=3)
    out.append(Method("k-diffusion", "dpm_adaptive", "adaptive λ", "tolerance", False, run,
                      note="" if run else "k-diffusion is not installed"))
    out.append(Method("score_sde", "RK45 (scipy)", "adaptive t", "tolerance", False, _score_sde_rk45))
    return out


def stochastic_methods() -> List[Method]:
    out: List[Method] = []
    configs: List[Tuple[str, str, Dict[str, Any], Sequence[str]]] = [
        ("dpm_solver", _dpm_label(2, True, "x0", 1.0), {"order": 2, "eta": 1.0}, ("log_snr", "karras")),
        ("dpm_solver", _dpm_label(3, True, "x0", 1.0), {"order": 3, "eta": 1.0}, ("log_snr", "karras")),
        ("euler_maruyama", "Euler-Maruyama", {}, ("uniform", "log_snr")),
        ("ddpm", "DDPM (ancestral)", {}, ("uniform", "log_snr")),
    ]
    for name, label, kwargs, grids in configs:
        for grid in grids:
            factory = _ours(name, grid=grid, **kwargs)
            out.append(Method("ours", label, grid, "fixed", True, factory("steps") if factory else None,
                              note="" if factory else f"sampler {name!r} is not registered"))
    factory = _ours("adaptive_sde")
    out.append(Method("ours", "adaptive SDE (Gotta Go Fast)", "adaptive", "tolerance", True,
                      factory("tol") if factory else None,
                      note="" if factory else "sampler 'adaptive_sde' is not registered"))
    kd = [("euler_ancestral", 1), ("dpmpp_2m_sde", 1), ("dpmpp_3m_sde", 1), ("dpmpp_sde", 2)]
    for schedule in ("karras", "exponential"):
        for sampler, per_step in kd:
            run = _kdiff_fixed(sampler, schedule)
            out.append(Method("k-diffusion", sampler, schedule, "fixed", True, run, per_step, 1,
                              "" if run else "k-diffusion is not installed"))
    return out


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
@dataclass
class Point:
    """One run: the parameter (steps or tolerances), the NFE used, the error measure, the wall time."""

    budget: Optional[int]
    param: Any
    nfe: int
    error: float  #: RMS error to the reference (deterministic) or sliced W2 to data (stochastic)
    seconds: float
    nfe_reported: Optional[int] = None  #: what the sampler's Samples.nfe said (ours), when it differs from the count
    failure: str = ""


@dataclass
class Result:
    family: str
    method: str
    schedule: str
    kind: str
    stochastic: bool
    points: List[Point] = field(default_factory=list)
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.method} [{self.schedule}]"


def _measure(method: Method, problem: Problem, param, seed: int, data: Optional[Tensor]) -> Point:
    start = time.perf_counter()
    try:
        x, nfe, reported = method.runner(problem, param, seed)
    except Exception as exc:  # a diverging or failing sampler is a result, not a crash
        return Point(None, param, 0, math.nan, time.perf_counter() - start, None, f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start
    if not torch.isfinite(x).all():
        return Point(None, param, nfe, math.nan, seconds, reported, "non-finite samples")
    if method.stochastic:
        err = sliced_wasserstein(x, data, projections=256, generator=torch.Generator().manual_seed(seed + 7))
    else:
        err = problem.rms_error(x)
    return Point(None, param, nfe, err, seconds, reported if reported is not None and reported != nfe else None)


def run_fixed(method: Method, problem: Problem, budgets: Sequence[int], seed: int, data=None) -> List[Point]:
    """For each NFE budget the largest steps with NFE ≤ budget (re-run with fewer steps if the count overshoots)."""
    points: List[Point] = []
    for budget in budgets:
        steps = (budget - method.extra) // method.per_step
        point = None
        while steps >= 1:
            point = _measure(method, problem, steps, seed, data)
            if point.failure or point.nfe <= budget:
                break
            steps -= 1
        if point is None or steps < 1:
            continue
        point.budget = budget
        points.append(point)
    return points


def run_tolerances(method: Method, problem: Problem, tolerances: Sequence[Tuple[float, float]], seed: int, data=None) -> List[Point]:
    return [_measure(method, problem, tol, seed, data) for tol in tolerances]


def run_problem(problem: Problem, budgets: Sequence[int], sde_budgets: Sequence[int], tolerances: Dict[str, List],
                seed: int = 0, log=print) -> Dict[str, Any]:
    """Every method on one problem; returns {"deterministic", "tolerance", "stochastic": [Result], "floor": {mean, min, max}}."""
    n = problem.x_T.shape[0]
    data = problem.gmm.sample(n, torch.Generator().manual_seed(seed + 101))
    # the finite-sample floor: fresh data against the same data sample, over several draws (it is noisy)
    draws = [sliced_wasserstein(problem.gmm.sample(n, torch.Generator().manual_seed(seed + 202 + k)), data,
                                projections=256, generator=torch.Generator().manual_seed(seed + 7)) for k in range(8)]
    floor = {"mean": sum(draws) / len(draws), "min": min(draws), "max": max(draws), "draws": len(draws)}
    groups: Dict[str, List[Result]] = {"deterministic": [], "tolerance": [], "stochastic": []}
    for group, methods in (("deterministic", deterministic_methods()), ("tolerance", tolerance_methods()),
                           ("stochastic", stochastic_methods())):
        for m in methods:
            res = Result(m.family, m.method, m.schedule, m.kind, m.stochastic, note=m.note)
            groups[group].append(res)
            if not m.available:
                continue
            start = time.perf_counter()
            if m.kind == "fixed":
                res.points = run_fixed(m, problem, sde_budgets if m.stochastic else budgets, seed, data)
            else:
                tols = tolerances["rk45" if m.family == "score_sde" else ("sde" if m.stochastic else "ode")]
                res.points = run_tolerances(m, problem, tols, seed, data)
            failures = sum(1 for p in res.points if p.failure)
            errs = ", ".join(f"{p.nfe}:{p.error:.2g}" for p in res.points if not p.failure)
            log(f"[{problem.name}] {m.family:<11} {res.label:<44} {time.perf_counter() - start:6.1f}s  NFE:err {errs}"
                + (f"  ({failures} failed)" if failures else ""))
    groups["floor"] = floor
    return groups


# ---------------------------------------------------------------------------------------------
# analysis
# ---------------------------------------------------------------------------------------------
def _ok(points: Sequence[Point]) -> List[Point]:
    return [p for p in points if not p.failure and math.isfinite(p.error)]


def nfe_to_reach(points: Sequence[Point], target: float) -> Optional[Dict[str, float]]:
    """The NFE at which an (NFE, error) curve first reaches ``target``: measured (first run at or below it)
    and interpolated log–log between the bracketing runs. None if never reached."""
    pts = sorted(_ok(points), key=lambda p: p.nfe)
    for i, p in enumerate(pts):
        if p.error <= target:
            if i == 0 or pts[i - 1].error <= target or pts[i - 1].nfe == p.nfe:
                return {"measured": p.nfe, "interpolated": float(p.nfe)}
            q = pts[i - 1]
            slope = (math.log(p.error) - math.log(q.error)) / (math.log(p.nfe) - math.log(q.nfe))
            est = math.exp(math.log(q.nfe) + (math.log(target) - math.log(q.error)) / slope)
            return {"measured": p.nfe, "interpolated": est}
    return None


def best_at(results: Sequence[Result], family_pred: Callable[[str], bool], budget: int):
    """(error, label, nfe) of the best fixed-step run with this budget among the chosen families."""
    best = None
    for r in results:
        if r.kind != "fixed" or not family_pred(r.family):
            continue
        for p in _ok(r.points):
            if p.budget == budget and (best is None or p.error < best[0]):
                best = (p.error, r.label if r.family == "ours" else f"{r.family} {r.label}", p.nfe)
    return best


def targets(groups: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's two targets, computed from the numbers."""
    det = groups["deterministic"]
    out: Dict[str, Any] = {"nfe_ratio": [], "adaptive": None}
    for budget in TARGET_BUDGETS:
        ours = best_at(det, lambda f: f == "ours", budget)
        peer = best_at(det, lambda f: f != "ours", budget)
        entry = {"budget": budget, "best_ours": ours, "best_peer": peer, "ratio": None, "met": None}
        if ours and peer:
            entry["ratio"] = ours[0] / peer[0]
            entry["met"] = bool(ours[0] <= TARGET_RATIO * peer[0])
        out["nfe_ratio"].append(entry)
    tol = {r.method: r for r in groups["tolerance"]}
    rk45 = tol.get("RK45 (scipy)")
    ours_adaptive = [r for r in groups["tolerance"] if r.family == "ours" and r.points]
    entry: Dict[str, Any] = {"target_error": TARGET_ADAPTIVE_ERROR, "ours_nfe": None, "rk45_nfe": None,
                             "rk45_error": None, "met": None, "note": ""}
    if rk45 is not None:
        ref = [p for p in _ok(rk45.points) if tuple(p.param) == (RK45_REFERENCE_TOL, RK45_REFERENCE_TOL)]
        if ref:
            entry["rk45_nfe"], entry["rk45_error"] = ref[0].nfe, ref[0].error
    if not ours_adaptive:
        entry["note"] = "no adaptive PF-ODE solver of ours is registered"
    else:
        reached = [(p, r.method) for r in ours_adaptive for p in _ok(r.points) if p.error <= TARGET_ADAPTIVE_ERROR]
        if reached:
            best, method = min(reached, key=lambda pm: pm[0].nfe)
            entry["ours_nfe"], entry["ours_error"], entry["ours_tol"] = best.nfe, best.error, list(best.param)
            entry["ours_method"] = method
        else:
            entry["note"] = f"no tolerance in the sweep reached RMS ≤ {TARGET_ADAPTIVE_ERROR:g}"
        if entry["ours_nfe"] is not None and entry["rk45_nfe"] is not None:
            entry["met"] = bool(entry["ours_nfe"] <= TARGET_RATIO * entry["rk45_nfe"])
        elif entry["ours_nfe"] is None:
            entry["met"] = False
    out["adaptive"] = entry
    return out


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------
def _fmt(x: Optional[float]) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.2e}"


def _cell(p: Optional[Point], budget: int) -> str:
    if p is None:
        return "—"
    if p.failure:
        return "fail"
    cell = _fmt(p.error) + ("" if p.nfe == budget else f" ({p.nfe})")
    return cell + ("" if p.nfe_reported is None else f" [reported {p.nfe_reported}]")


def observed_order(points: Sequence[Point], last: int = 3) -> Optional[float]:
    """−d log(error)/d log(NFE), least squares over the ``last`` largest-NFE runs (the empirical order)."""
    pts = sorted(_ok(points), key=lambda p: p.nfe)[-last:]
    if len(pts) < 2 or any(p.error <= 0 for p in pts):
        return None
    xs = [math.log(p.nfe) for p in pts]
    ys = [math.log(p.error) for p in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return None if sxx == 0 else -sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def _budget_table(results: Sequence[Result], budgets: Sequence[int], order: bool = True) -> List[str]:
    tail = min(3, len(budgets))
    head = "| family | method | grid / schedule | " + " | ".join(f"NFE {b}" for b in budgets)
    head += f" | slope (last {tail}) |" if order else " |"
    lines = [head, "|" + "---|" * (3 + len(budgets) + int(order))]
    for r in results:
        if not r.points:
            continue
        by_budget = {p.budget: p for p in r.points}
        row = f"| {r.family} | {r.method} | {r.schedule} | " + " | ".join(_cell(by_budget.get(b), b) for b in budgets)
        if order:
            slope = observed_order(r.points, tail)
            row += " | " + ("—" if slope is None else f"{slope:.2f}")
        lines.append(row + " |")
    return lines


def _tolerance_table(results: Sequence[Result]) -> List[str]:
    lines = ["| family | method | rtol | atol | NFE | error | seconds |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for p in r.points:
            lines.append(f"| {r.family} | {r.method} | {p.param[0]:g} | {p.param[1]:g} | {p.nfe if not p.failure else '—'} | "
                         f"{'fail: ' + p.failure[:60] if p.failure else _fmt(p.error)} | {p.seconds:.2f} |")
    return lines


def _target_nfe_table(results: Sequence[Result]) -> List[str]:
    lines = ["| family | method | grid / schedule | " + " | ".join(f"RMS ≤ {t:g}" for t in TARGET_ERRORS) + " |",
             "|" + "---|" * (3 + len(TARGET_ERRORS))]
    for r in results:
        if not _ok(r.points):
            continue
        cells = []
        for t in TARGET_ERRORS:
            hit = nfe_to_reach(r.points, t)
            max_nfe = max(p.nfe for p in _ok(r.points))
            cells.append(f"> {max_nfe}" if hit is None else
                         (f"{hit['measured']}" if hit["interpolated"] == hit["measured"] else
                          f"≈{math.ceil(hit['interpolated'])} (run: {hit['measured']})"))
        lines.append(f"| {r.family} | {r.method} | {r.schedule} | " + " | ".join(cells) + " |")
    return lines


def _skipped(groups: Dict[str, Any]) -> List[str]:
    notes = sorted({f"{r.family} {r.method} [{r.schedule}]: {r.note}" for g in ("deterministic", "tolerance", "stochastic")
                    for r in groups[g] if not r.points and r.note})
    return [f"- {n}" for n in notes]


def _verdict(met: Optional[bool]) -> str:
    return "n/a" if met is None else ("**met**" if met else "**not met**")


def markdown_report(report: Dict[str, Any], runs: Dict[str, Dict[str, Any]]) -> str:
    meta = report["meta"]
    lines = [
        "# Solver benchmark",
        "",
        f"Produced by `{meta['command']}` in {meta['seconds']:.0f} s on {meta['machine']} "
        f"(torch {meta['torch']}, {meta['threads']} thread(s){', k-diffusion ' + meta['k_diffusion'] if meta['k_diffusion'] else ', k-diffusion not installed'}).",
        "",
        "Exact-score Gaussian mixtures under VPSDE(β_min = 0.1, β_max = 20), eps = 1e-3, no training. Every sampler starts",
        "from the same x_T (k-diffusion from x̃_T = x_T/α_T, with D(x̃, σ̃) = x̂_0(α x̃, t(σ̃))) and ends with the Tweedie",
        "denoise at eps (k-diffusion: the final step to σ̃ = 0 from σ̃(eps); dpm_fast/dpm_adaptive: an added denoise at σ̃(eps)).",
        "**Error** of deterministic samplers: pathwise RMS error against the reference (scipy DOP853, rtol 1e-10, float64",
        "PF-ODE from T to eps, then the exact x̂_0 at eps). Samplers run in float32. NFE counts every network",
        "evaluation (the final denoise included); a cell shows `error (NFE used)` where the NFE used is under the budget.",
        "Stochastic samplers: sliced 2-Wasserstein distance (256 projections) to a fresh data sample of the same size.",
        "",
    ]
    for name, info in report["problems"].items():
        groups = runs[name]
        lines += [f"## {name}: {info['description']}", "",
                  f"{info['n']} samples, D = {info['dim']}. Reference: {info['reference_nfe']} DOP853 evaluations, "
                  f"{info['reference_seconds']:.1f} s. RMS gap to a 100× looser solve (rtol 1e-8) on {info['reference_check_subset']} "
                  f"samples: {_fmt(info['reference_check'])}, an upper estimate of the reference's own error.", ""]
        t = info["targets"]
        lines += ["### Targets", ""]
        for e in t["nfe_ratio"]:
            if e["best_ours"] and e["best_peer"]:
                lines.append(f"- NFE {e['budget']}: best ours {_fmt(e['best_ours'][0])} ({e['best_ours'][1]}, NFE {e['best_ours'][2]}) vs best peer "
                             f"{_fmt(e['best_peer'][0])} ({e['best_peer'][1]}, NFE {e['best_peer'][2]}): ratio {e['ratio']:.2f}, target ≤ {TARGET_RATIO} "
                             f"{_verdict(e['met'])}.")
            else:
                lines.append(f"- NFE {e['budget']}: not enough results (ours {e['best_ours']}, peer {e['best_peer']}).")
        a = t["adaptive"]
        rk = (f"RK45 at rtol = atol = {RK45_REFERENCE_TOL:g} used {a['rk45_nfe']} NFE (RMS {_fmt(a['rk45_error'])})"
              if a["rk45_nfe"] is not None else "RK45 at 1e-5 did not run")
        if a["ours_nfe"] is not None:
            lines.append(f"- Adaptive PF-ODE: RMS ≤ {a['target_error']:g} with {a['ours_nfe']} NFE ({a.get('ours_method', '')}, RMS {_fmt(a['ours_error'])}, "
                         f"rtol {a['ours_tol'][0]:g}, atol {a['ours_tol'][1]:g}); {rk}; target ≤ {TARGET_RATIO}× "
                         f"{_verdict(a['met'])}.")
        else:
            lines.append(f"- Adaptive PF-ODE: {a['note']}; {rk}; target {_verdict(a['met'])}.")
        lines += ["", "### Deterministic samplers: RMS error vs NFE", "",
                  "`slope`: −d log(error)/d log(NFE) over the largest budgets, the empirical order of convergence.", ""]
        lines += _budget_table(groups["deterministic"], info["budgets"])
        lines += ["", "### Tolerance-driven PF-ODE solvers", ""]
        lines += _tolerance_table(groups["tolerance"])
        lines += ["", "### NFE needed for a target RMS error",
                  "", "`≈N (run: M)`: log–log interpolation between the bracketing runs; M = the first run that reached it.", ""]
        lines += _target_nfe_table(groups["deterministic"] + groups["tolerance"])
        fl = info["sw_floor"]
        lines += ["", "### Stochastic samplers: sliced W2 to data vs NFE", "",
                  f"Finite-sample floor (fresh data vs the same data sample, {fl['draws']} draws): mean {fl['mean']:.3g}, "
                  f"range {fl['min']:.3g}–{fl['max']:.3g}; differences inside that range are sampling noise.", ""]
        lines += _budget_table([r for r in groups["stochastic"] if r.kind == "fixed"], info["sde_budgets"], order=False)
        tol_sde = [r for r in groups["stochastic"] if r.kind == "tolerance" and r.points]
        if tol_sde:
            lines += ["", "(adaptive SDE: error column is the sliced W2)", ""] + _tolerance_table(tol_sde)
        skipped = _skipped(groups)
        if skipped:
            lines += ["", "Skipped:", ""] + skipped
        lines.append("")
    lines += ["## Summary of the issue's targets", ""]
    for name, info in report["problems"].items():
        t = info["targets"]
        parts = [f"NFE {e['budget']}: {_verdict(e['met'])}" + (f" (ratio {e['ratio']:.2f})" if e["ratio"] is not None else "")
                 for e in t["nfe_ratio"]]
        parts.append(f"adaptive ≤ ½ RK45 NFE at RMS 1e-4: {_verdict(t['adaptive']['met'])}")
        lines.append(f"- {name}: " + "; ".join(parts))
    lines.append("")
    return "\n".join(lines)


#: the curves drawn (each at its best grid/schedule per NFE); every run is in the tables and the JSON
PLOT_OURS = ("DDIM", "DPM-Solver++(2M)", "DPM-Solver++(3M)", "DPM-Solver(3M)", "DPM-Solver++(3S)", "UniPC-3 bh2",
             "Heun (EDM)", "adaptive DPM-Solver-23", "SDE-DPM-Solver++(2M)", "SDE-DPM-Solver++(3M)", "Euler-Maruyama",
             "DDPM (ancestral)", "adaptive SDE (Gotta Go Fast)")
PLOT_PEERS = ("euler", "heun", "lms", "dpmpp_2m", "dpmpp_3m_sde(eta=0)", "dpm_fast", "dpm_adaptive", "RK45 (scipy)",
              "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde")


def _envelope(results: Sequence[Result], ours: bool) -> List[Tuple[int, float]]:
    best: Dict[int, float] = {}
    for r in results:
        if r.kind == "fixed" and (r.family == "ours") == ours:
            for p in _ok(r.points):
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
                pts = _ok(r.points)
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
                                label=f"best {'ours' if ours else 'peer'} (fixed step)")
            tab10, dark2 = plt.get_cmap("tab10").colors, plt.get_cmap("Dark2").colors  # greys are for the envelopes
            colors = {True: iter(tab10[:7] + tab10[8:] + dark2[:7]), False: iter(dark2[:7] + tab10[:7])}
            for (family, method), pts in curves.items():
                xs, ys = zip(*sorted(pts.items()))
                ours = family == "ours"
                ax.plot(xs, ys, ls="-" if ours else "--", marker="." if fixed[(family, method)] else "o",
                        ms=4 if fixed[(family, method)] else 5, color=next(colors[ours]), lw=1.5 if ours else 1.1,
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


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f} at start"
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPU(s){load}, Python {platform.python_version()}"


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="smoke test: few samples, NFE ≤ 20, short sweeps (well under a minute)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for solvers.md/.json/.png (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for x_T, noise and data (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: %(default)s; small batches run fastest single-threaded)")
    return parser


def run(args: argparse.Namespace, command: str, log=print) -> Dict[str, Any]:
    """Run the benchmark and write the reports (torch's thread count is restored afterwards)."""
    with torch_threads(args.threads):
        return _run(args, command, log)


def _run(args: argparse.Namespace, command: str, log) -> Dict[str, Any]:
    start = time.perf_counter()
    quick = bool(args.quick)
    budgets = QUICK_BUDGETS if quick else FULL_BUDGETS
    sde_budgets = QUICK_SDE_BUDGETS if quick else FULL_SDE_BUDGETS
    tolerances = {
        "ode": [(5e-2, 7.8e-3), (1e-3, 1e-4)] if quick else
               [(5e-2, 7.8e-3), (1e-2, 1e-3), (3e-3, 3e-4), (1e-3, 1e-4), (5e-4, 5e-5), (3e-4, 3e-5), (2e-4, 2e-5),
                (1e-4, 1e-5), (3e-5, 3e-6), (1e-5, 1e-6)],
        "rk45": [(1e-3, 1e-3), (1e-5, 1e-5)] if quick else [(1e-2, 1e-2), (1e-3, 1e-3), (1e-4, 1e-4), (1e-5, 1e-5), (1e-6, 1e-6)],
        "sde": [(1e-1, 1e-2)] if quick else [(1e-1, 1e-2), (5e-2, 5e-3), (2e-2, 2e-3), (1e-2, 1e-3)],
    }
    n2, n16 = (64, 48) if quick else (1000, 500)
    if not peers.k_diffusion_available():
        log("note: k-diffusion is not installed; its samplers are reported as unavailable "
            "(pip install --no-deps k-diffusion==0.1.1.post1 tqdm)")
    missing = [n for n in ("dpm_solver", "unipc", "heun", "dpm_solver_adaptive", "adaptive_sde") if n not in samplers.REGISTRY]
    if missing:
        log(f"note: samplers not registered (skipped): {', '.join(missing)}")
    log(f"solving the reference PF-ODEs (DOP853, rtol 1e-10) for {n2} + {n16} samples ...")
    problems = default_problems(n2=n2, n16=n16, seed=args.seed)
    report: Dict[str, Any] = {"problems": {}}
    runs: Dict[str, Dict[str, Any]] = {}
    for name, problem in problems.items():
        log(f"[{name}] reference: {problem.reference_nfe} evaluations, {problem.reference_seconds:.1f}s")
        groups = run_problem(problem, budgets, sde_budgets, tolerances, seed=args.seed, log=log)
        runs[name] = groups
        report["problems"][name] = {
            "description": problem.description, "n": problem.x_T.shape[0], "dim": problem.dim,
            "sde": repr(problem.sde), "reference_nfe": problem.reference_nfe,
            "reference_seconds": problem.reference_seconds, "reference_check": problem.reference_check,
            "reference_check_subset": min(32, problem.x_T.shape[0]),
            "budgets": list(budgets), "sde_budgets": list(sde_budgets), "sw_floor": groups["floor"],
            "targets": targets(groups),
            "results": {g: [dict(asdict(r), label=r.label) for r in groups[g]] for g in ("deterministic", "tolerance", "stochastic")},
            "nfe_to_target": {
                f"{r.family} {r.label}": {f"{t:g}": nfe_to_reach(r.points, t) for t in TARGET_ERRORS}
                for r in groups["deterministic"] + groups["tolerance"] if _ok(r.points)
            },
        }
    kd_version = None
    if peers.k_diffusion_available():
        try:
            from importlib.metadata import version

            kd_version = version("k-diffusion")
        except Exception:
            kd_version = "?"
    report["meta"] = {"command": command, "machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "k_diffusion": kd_version, "quick": quick, "seed": args.seed,
                      "registered_samplers": samplers.available(), "seconds": time.perf_counter() - start}
    out = Path(args.out)
    write_text(out / "solvers.json", json.dumps(_jsonable(report), indent=1, default=str) + "\n")
    write_text(out / "solvers.md", markdown_report(report, runs))
    plot(report, runs, out / "solvers.png")
    log(f"wrote {out / 'solvers.md'}, {out / 'solvers.json'}, {out / 'solvers.png'} ({report['meta']['seconds']:.0f}s)")
    return report


build_parser, main = entry_points(add_arguments, run, __doc__, "sde-diffusion bench solvers")


if __name__ == "__main__":
    sys.exit(main())
