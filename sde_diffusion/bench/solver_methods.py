"""The solver benchmark's methods: every sampler configuration it runs, ours and the peers', as a :class:`Method`
whose runner takes (problem, steps or tolerances, seed) and returns (x̂_0, NFE counted, NFE the sampler reported).

Ours run from the registry (``samplers.REGISTRY``) on the "log_snr" and "karras" grids; k-diffusion's samplers on
its Karras (ρ = 7) and exponential σ̃ schedules (and dpm_fast's own); score_sde's RK45 through scipy. A sampler
or peer that is not installed is kept as a method without a runner, so the report can say it was skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import samplers
from . import peers
from .problems import Problem, counted_score_model

Runner = Callable[[Problem, Any, int], Tuple[Tensor, int, Optional[int]]]
#: ends the name of a method whose grid was fitted to the problem's model (see :mod:`.solver_fitted`)
FITTED_SUFFIX = " (fitted grid)"


@dataclass
class Method:
    """One sampler configuration. ``kind="fixed"``: param = steps with NFE = per_step·steps + extra;
    ``kind="tolerance"``: param = a (rtol, atol) pair. ``prepare(problem, param)``, when given, runs before the
    measured run and outside its NFE and seconds (e.g. fitting a grid); it returns its own cost as a dict."""

    family: str  #: "ours", "k-diffusion" or "score_sde"
    method: str  #: display name
    schedule: str  #: grid / sigma schedule ("own" where the method fixes it)
    kind: str
    stochastic: bool
    runner: Optional[Runner]
    per_step: int = 1
    extra: int = 1
    note: str = ""
    prepare: Optional[Callable[[Problem, Any], Dict[str, Any]]] = None
    budgets: Optional[Tuple[int, ...]] = None  #: the only NFE budgets it runs at (None: every budget)

    @property
    def key(self) -> str:
        return f"{self.family}:{self.method}:{self.schedule}"

    @property
    def available(self) -> bool:
        return self.runner is not None


def problem_model(problem: Problem):
    """One counted exact-score model per problem (shared by every sampler)."""
    if "model" not in problem.extra:
        problem.extra["model"], problem.extra["counter"] = counted_score_model(problem.gmm, problem.sde)
    return problem.extra["model"], problem.extra["counter"]


GridFor = Callable[[Problem, int], Tensor]


def ours_factory(name: str, **fixed) -> Optional[Callable[..., Runner]]:
    """A runner factory for the registered sampler ``name`` (None when it is not registered): ``factory("steps")``
    or ``factory("tol")``; ``factory("steps", grid_for)`` runs on the grid ``grid_for(problem, steps)``."""
    cls = samplers.REGISTRY.get(name)
    if cls is None:
        return None

    def factory(param_name: str, grid_for: Optional[GridFor] = None) -> Runner:
        def run(problem: Problem, param, seed: int):
            model, counter = problem_model(problem)
            kwargs = dict(fixed)
            if param_name == "steps":
                kwargs["steps"] = int(param)
                if grid_for is not None:
                    kwargs["grid"] = grid_for(problem, int(param))
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
        model, _ = problem_model(problem)
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
        model, _ = problem_model(problem)
        x, nfe = peers.run_k_diffusion("dpm_adaptive", model, problem.x_T.clone(), seed=seed,
                                       rtol=tol[0], atol=tol[1], **kwargs)
        return x, nfe, None

    return run


def _score_sde_rk45(problem: Problem, tol, seed: int):
    model, _ = problem_model(problem)
    x, nfe = peers.run_score_sde_ode(model, problem.x_T.clone(), rtol=tol[0], atol=tol[1])
    return x, nfe, None


def _dpm_label(order: int, multistep: bool, prediction: str, eta: float = 0.0) -> str:
    base = "DPM-Solver++" if prediction == "x0" else "DPM-Solver"
    body = "1" if order == 1 else f"{order}{'M' if multistep else 'S'}"
    return f"{'SDE-' if eta else ''}{base}({body})"


def ours_fixed_configs() -> List[Tuple[str, str, Dict[str, Any], int]]:
    """Our deterministic fixed-step samplers: (registry name, label, keyword arguments, NFE per step)."""
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
    return ours_configs


def deterministic_methods() -> List[Method]:
    """Ours on the "log_snr" and "karras" grids; k-diffusion's ODE samplers on Karras (ρ = 7) and exponential sigmas."""
    out: List[Method] = []
    for grid in ("log_snr", "karras"):
        for name, label, kwargs, per_step in ours_fixed_configs():
            factory = ours_factory(name, grid=grid, **kwargs)
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
    factory = ours_factory("dpm_solver_adaptive", order=3)
    out.append(Method("ours", "adaptive DPM-Solver-23", "adaptive λ", "tolerance", False,
                      factory("tol") if factory else None,
                      note="" if factory else "sampler 'dpm_solver_adaptive' is not registered"))
    factory = ours_factory("unipc_adaptive", order=4)
    out.append(Method("ours", "adaptive UniPC-4", "adaptive λ", "tolerance", False,
                      factory("tol") if factory else None,
                      note="" if factory else "sampler 'unipc_adaptive' is not registered"))
    factory = ours_factory("probability_flow", method="dopri5")
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
            factory = ours_factory(name, grid=grid, **kwargs)
            out.append(Method("ours", label, grid, "fixed", True, factory("steps") if factory else None,
                              note="" if factory else f"sampler {name!r} is not registered"))
    factory = ours_factory("adaptive_sde")
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
