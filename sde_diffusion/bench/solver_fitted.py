"""Methods on time grids fitted to the problem's model (issue 9): our main fixed-step samplers, each on a grid
chosen per (problem, NFE budget) from calibration draws x_T that are never the evaluation x_T.

Calibration, once per problem: a fit set and a validation set of x_T ~ p_T, each from its own generator seeded
apart from the evaluation x_T (the rows are checked disjoint), and their reference x̂_0 (DOP853 PF-ODE + Tweedie
denoise, as the problem's own reference). Per sampler and budget the candidate grids are

* ``direct``: :func:`sd.samplers.grids.optimize` on the fit set — Powell on the log-SNR step shares minimising the
  pathwise RMS error (Xue et al. 2024, "Accelerating Diffusion Sampling with Optimized Time Steps");
* ``smooth``: the same search restricted to a few smooth (Legendre) modes of the step shares (``basis``), which
  has less room to fit the fit set's tail;
* ``gits``: GITS's dynamic programme over 120 log-SNR candidates on the fit set's pilot trajectories (Chen et al.
  2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling");
* ``ays``: Align Your Steps' KLUB (Sabour et al. 2024) on the fit set's reference samples, searched over the same
  smooth modes as ``smooth``; it depends on the model and the number of steps, not on the sampler, so it is fitted
  once per (problem, steps) and its cost is counted where it was fitted;
* the default grids ``log_snr`` and ``karras``,

and the one with the least RMS error on the validation set is used. Per-sample errors are heavy-tailed (a few
trajectories end in another mode than the exact flow), so a grid that fits the fit set can lose on new x_T; the
validation split is what keeps such a grid out. The calibration cost (batched network evaluations and seconds) is
recorded in ``Point.calibration``, never in the per-sample NFE, which counts only the evaluation run.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor

from ..samplers import REGISTRY, FixedStepSampler
from ..samplers.grid_optimize import GITS_CANDIDATES, gits_grid, optimize, pathwise_rms, reference_flow
from ..samplers.grids import make_grid
from .problems import Problem
from .solver_methods import FITTED_SUFFIX, Method, ours_factory, ours_fixed_configs

#: the samplers that get a fitted-grid column (labels of :func:`ours_fixed_configs`)
FITTED_SAMPLERS = ("DDIM", "DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-3 bh2", "Heun (EDM)")
CANDIDATES = ("direct", "smooth", "gits", "ays", "log_snr", "karras")


@dataclass(frozen=True)
class CalibrationSettings:
    """How the grids are fitted: draws in the fit and validation sets, the searches' budgets (sampler runs) and the
    smooth search's Legendre modes, the NFE budgets fitted, the candidates."""

    n_fit: int = 256
    n_validation: int = 2048
    max_evals: int = 300
    smooth_basis: int = 4
    smooth_max_evals: int = 100
    budgets: Tuple[int, ...] = (5, 10, 20)
    candidates: Tuple[str, ...] = CANDIDATES
    #: the fit set's generator is seeded seed + seed_offset, the validation set's seed + seed_offset + 1
    seed_offset: int = 1_000_003


FULL_CALIBRATION = CalibrationSettings()
QUICK_CALIBRATION = CalibrationSettings(n_fit=32, n_validation=64, max_evals=12, smooth_max_evals=8, budgets=(10,))


@dataclass
class CalibrationSet:
    fit_x: Tensor
    fit_reference: Tensor  #: the reference x̂_0 of the fit set
    pilot: Tensor  #: the fit set's reference trajectory at the GITS candidate times (candidates, n_fit, dim)
    candidates: Tensor  #: those times, T … eps
    validation_x: Tensor
    validation_reference: Tensor
    fit_seed: int
    validation_seed: int
    reference_nfe: int  #: batched evaluations of the two reference solves and denoises (shared by every fit)
    reference_seconds: float


def assert_disjoint(evaluation: Tensor, *calibration: Tensor, atol: float = 1e-5) -> None:
    """Raise ValueError if a calibration row equals (within ``atol``: the same draw in float32 and float64) an
    evaluation row or a row of another calibration set."""
    sets = [evaluation.detach().double().cpu().flatten(1)] + [c.detach().double().cpu().flatten(1) for c in calibration]
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            if bool((torch.cdist(sets[i], sets[j]) <= atol).any()):
                raise ValueError(f"calibration x_T must be disjoint from the evaluation x_T and from each other "
                                 f"(sets {i} and {j} share a row)")


def calibration_set(problem: Problem, settings: CalibrationSettings, seed: int) -> CalibrationSet:
    """The problem's fit and validation draws and their references (computed once, kept in ``problem.extra``)."""
    key = ("calibration", settings.n_fit, settings.n_validation, settings.seed_offset, seed)
    if key not in problem.extra:
        start = time.perf_counter()
        sde, model = problem.sde, problem.gmm.score_model(problem.sde)  # not the counted evaluation model
        fit_seed, validation_seed = seed + settings.seed_offset, seed + settings.seed_offset + 1
        fit_x = sde.prior_sample((settings.n_fit, problem.dim), torch.Generator().manual_seed(fit_seed), dtype=torch.float64)
        val_x = sde.prior_sample((settings.n_validation, problem.dim), torch.Generator().manual_seed(validation_seed),
                                 dtype=torch.float64)
        assert_disjoint(problem.x_T, fit_x, val_x)
        candidates = make_grid("log_snr", sde, GITS_CANDIDATES)
        pilot, nfe_fit = reference_flow(model, fit_x, denoise=False, times=candidates)
        with torch.no_grad():
            fit_ref = model.x0(pilot[-1], torch.tensor(sde.eps, dtype=torch.float64))
        val_ref, nfe_val = reference_flow(model, val_x, denoise=True)
        problem.extra[key] = CalibrationSet(fit_x, fit_ref, pilot, candidates, val_x, val_ref, fit_seed, validation_seed,
                                            nfe_fit + 1 + nfe_val, time.perf_counter() - start)
    return problem.extra[key]


def fit_grid(problem: Problem, sampler: FixedStepSampler, settings: CalibrationSettings,
             seed: int) -> Tuple[Tensor, Dict[str, Any]]:
    """The candidate grid with the least validation RMS for ``sampler`` (its ``steps``), and what choosing it cost."""
    cal = calibration_set(problem, settings, seed)
    model, steps = problem.gmm.score_model(problem.sde), sampler.steps

    def fit_reference(x_T: Tensor) -> Tensor:
        if not torch.equal(x_T, cal.fit_x):
            raise RuntimeError("grids.optimize drew other calibration x_T than the fit set")
        return cal.fit_reference

    start = time.perf_counter()
    candidates: Dict[str, Dict[str, Any]] = {}
    grids: Dict[str, Tensor] = {}
    nfe = 0
    for name in settings.candidates:
        entry: Dict[str, Any] = {}
        if name in ("direct", "smooth"):
            options = dict(max_evals=settings.max_evals) if name == "direct" else \
                dict(max_evals=settings.smooth_max_evals, basis=settings.smooth_basis)
            grids[name], info = optimize(sampler, model, steps, (problem.dim,), torch.Generator().manual_seed(cal.fit_seed),
                                         n_calibration=settings.n_fit, reference=fit_reference, return_info=True, **options)
            entry.update(fit_rms=info.final_rms, fit_rms_initial=info.initial_rms, evaluations=info.evaluations,
                         nfe=info.nfe)
            nfe += info.nfe
        elif name == "ays":
            cached = problem.extra.setdefault(("ays grid", cal.fit_seed, settings.n_fit), {})
            if steps not in cached:
                cached[steps] = optimize(sampler, model, steps, (problem.dim,), torch.Generator().manual_seed(cal.fit_seed),
                                         n_calibration=settings.n_fit, reference=fit_reference, method="ays",
                                         max_evals=settings.smooth_max_evals, basis=settings.smooth_basis, return_info=True)
                entry["nfe"] = cached[steps][1].nfe
                nfe += entry["nfe"]
            grids[name] = cached[steps][0]
        elif name == "gits":
            grids[name], entry["nfe"] = gits_grid(model, steps, cal.pilot, cal.candidates)
            nfe += entry["nfe"]
        else:
            grids[name] = make_grid(name, problem.sde, steps)
        entry["validation_rms"], val_nfe = pathwise_rms(sampler, model, grids[name], cal.validation_x,
                                                        cal.validation_reference)
        nfe += val_nfe
        candidates[name] = entry
    chosen = min(candidates, key=lambda n: candidates[n]["validation_rms"])
    info = {"chosen": chosen, "candidates": candidates, "nfe": nfe, "seconds": time.perf_counter() - start,
            "n_fit": settings.n_fit, "n_validation": settings.n_validation, "fit_seed": cal.fit_seed,
            "validation_seed": cal.validation_seed, "shared_reference_nfe": cal.reference_nfe,
            "shared_reference_seconds": cal.reference_seconds, "settings": asdict(settings),
            "grid": grids[chosen].tolist()}
    return grids[chosen], info


def fitted_methods(settings: CalibrationSettings = FULL_CALIBRATION, seed: int = 0) -> List[Method]:
    """One "<sampler> (fitted grid)" method per :data:`FITTED_SAMPLERS`, at ``settings.budgets`` only."""
    out: List[Method] = []
    for name, label, kwargs, per_step in ours_fixed_configs():
        if label not in FITTED_SAMPLERS:
            continue
        factory = ours_factory(name, **kwargs)
        if factory is None:
            out.append(Method("ours", label + FITTED_SUFFIX, "fitted", "fixed", False, None, per_step, 1,
                              f"sampler {name!r} is not registered"))
            continue
        cache_key = ("fitted grid", label)

        def prepare(problem: Problem, steps, name=name, kwargs=kwargs, cache_key=cache_key) -> Dict[str, Any]:
            grid, info = fit_grid(problem, REGISTRY[name](steps=int(steps), **kwargs), settings, seed)
            problem.extra.setdefault(cache_key, {})[int(steps)] = grid
            return info

        def grid_for(problem: Problem, steps: int, cache_key=cache_key) -> Tensor:
            return problem.extra[cache_key][steps]

        out.append(Method("ours", label + FITTED_SUFFIX, "fitted", "fixed", False, factory("steps", grid_for),
                          per_step, 1, prepare=prepare, budgets=tuple(settings.budgets)))
    return out
