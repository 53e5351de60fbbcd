"""The solver benchmark: error per network evaluation (NFE) against exact ground truth, peers in the same run.

Problems (no training): exact-score Gaussian mixtures under VPSDE(0.1, 20), eps = 1e-3 —
(a) eight Gaussians in 2-D, (b) a 16-D mixture with rotated anisotropic covariances (eigenvalues
1e-3…1), stiff near t → 0. Every sampler starts from the *same* x_T (k-diffusion from x̃_T = x_T/α_T)
and ends with the Tweedie denoise at eps (σ̃_min), so results compare like with like.

* Deterministic samplers: pathwise RMS error of the final sample against the reference PF-ODE
  solution (scipy DOP853, rtol 1e-10, float64, then the exact x̂_0 at eps), at NFE ≈ 5, 10, 20, 50, …
  (steps chosen to land on or just under each budget; the NFE actually used is recorded).
* The same samplers of ours on time grids fitted per (problem, NFE budget) to the model from calibration x_T that
  are disjoint from the evaluation x_T (:mod:`.solver_fitted`); the fitting cost is reported apart, never in the NFE.
  Errors are heavy-tailed, so medians, the worst-1 % share and paired bootstrap intervals on the target ratios are
  reported too.
* Tolerance-driven solvers (adaptive DPM-Solver, k-diffusion's dpm_adaptive, score_sde's RK45, our
  torchdiffeq PF-ODE): (NFE, error) at several tolerances.
* Stochastic samplers: sliced Wasserstein distance to fresh data (with the data-vs-data floor).

Run ``sde-diffusion bench solvers [--quick] [--out DIR]``; writes ``solvers.md``, ``solvers.json`` and
``solvers.png`` to ``benchmarks/results/`` (atomically). Samplers not (yet) registered are skipped with a note.
This module is the command line; the methods are in :mod:`.solver_methods` and :mod:`.solver_fitted`, the
measurements and targets in :mod:`.solver_measure`, the report in :mod:`.solver_report`, the figure in
:mod:`.solver_plot`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict

import torch

from .. import samplers
from .._io import write_text
from . import peers
from ._standalone import entry_points, jsonable, machine, torch_threads
from .problems import default_problems
from .solver_fitted import FULL_CALIBRATION, QUICK_CALIBRATION, CalibrationSettings, fitted_methods
from .solver_measure import (
    FIELD_BUDGET, RK45_REFERENCE_TOL, TARGET_ADAPTIVE_ERROR, TARGET_BUDGETS, TARGET_ERRORS, TARGET_RATIO, Point,
    Result, best_at, nfe_to_reach, observed_order, ok_points, run_fixed, run_problem, run_tolerances, targets,
)
from .solver_methods import (
    FITTED_SUFFIX, Method, deterministic_methods, stochastic_methods, tolerance_methods,
)
from .solver_plot import plot
from .solver_report import markdown_report

DEFAULT_OUT = "benchmarks/results"
FULL_BUDGETS = (5, 10, 20, 50, 100, 200)
QUICK_BUDGETS = (5, 10, 20)
FULL_SDE_BUDGETS = (10, 20, 50, 100, 200, 500)
QUICK_SDE_BUDGETS = (10, 20)


def fitting_seconds(runs: Dict[str, Dict[str, Any]]) -> float:
    """Wall time spent choosing fitted grids: every fit plus each problem's shared calibration references."""
    total = 0.0
    for groups in runs.values():
        shared = {}
        for r in groups["deterministic"]:
            for p in r.points:
                if p.calibration:
                    total += p.calibration["seconds"]
                    shared[p.calibration["fit_seed"]] = p.calibration["shared_reference_seconds"]
        total += sum(shared.values())
    return total


def result_json(result: Result) -> Dict[str, Any]:
    """A result as JSON-ready dicts, without the per-sample errors kept in memory."""
    out = dict(asdict(result), label=result.label)
    for point in out["points"]:
        point.pop("per_sample", None)
    return out


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
    calibration = QUICK_CALIBRATION if quick else FULL_CALIBRATION
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
        methods = {"deterministic": deterministic_methods() + fitted_methods(calibration, seed=args.seed),
                   "tolerance": tolerance_methods(), "stochastic": stochastic_methods()}
        groups = run_problem(problem, methods, budgets, sde_budgets, tolerances, seed=args.seed, log=log)
        runs[name] = groups
        report["problems"][name] = {
            "description": problem.description, "n": problem.x_T.shape[0], "dim": problem.dim,
            "sde": repr(problem.sde), "reference_nfe": problem.reference_nfe,
            "reference_seconds": problem.reference_seconds, "reference_check": problem.reference_check,
            "reference_check_subset": min(32, problem.x_T.shape[0]),
            "budgets": list(budgets), "sde_budgets": list(sde_budgets), "sw_floor": groups["floor"],
            "targets": targets(groups),
            "results": {g: [result_json(r) for r in groups[g]] for g in ("deterministic", "tolerance", "stochastic")},
            "nfe_to_target": {
                f"{r.family} {r.label}": {f"{t:g}": nfe_to_reach(r.points, t) for t in TARGET_ERRORS}
                for r in groups["deterministic"] + groups["tolerance"] if ok_points(r.points)
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
                      "registered_samplers": samplers.available(), "seconds": time.perf_counter() - start,
                      "fitting_seconds": fitting_seconds(runs)}
    out = Path(args.out)
    write_text(out / "solvers.json", json.dumps(jsonable(report), indent=1, default=str) + "\n")
    write_text(out / "solvers.md", markdown_report(report, runs))
    plot(report, runs, out / "solvers.png")
    log(f"wrote {out / 'solvers.md'}, {out / 'solvers.json'}, {out / 'solvers.png'} ({report['meta']['seconds']:.0f}s)")
    return report


build_parser, main = entry_points(add_arguments, run, __doc__, "sde-diffusion bench solvers")

#: the benchmark's API in one place (defined in the solver_* modules)
__all__ = [
    "CalibrationSettings", "FIELD_BUDGET", "FITTED_SUFFIX", "FULL_CALIBRATION", "QUICK_CALIBRATION", "fitted_methods", "FULL_BUDGETS", "QUICK_BUDGETS", "RK45_REFERENCE_TOL", "TARGET_ADAPTIVE_ERROR",
    "TARGET_BUDGETS", "TARGET_ERRORS", "TARGET_RATIO", "Method", "Point", "Result", "add_arguments", "best_at",
    "build_parser", "deterministic_methods", "machine", "main", "markdown_report", "nfe_to_reach", "observed_order",
    "plot", "run", "run_fixed", "run_problem", "run_tolerances", "stochastic_methods", "targets", "tolerance_methods",
]


if __name__ == "__main__":
    sys.exit(main())
