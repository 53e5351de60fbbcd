"""Time grids fitted to a model: direct minimisation of a sampler's pathwise error (Xue et al. 2024).

Given a deterministic fixed-step sampler and a model, the grid t_0 = T > t_1 > … > t_N = eps is chosen
to minimise the pathwise RMS error at the end of sampling against a high-accuracy probability-flow
ODE solve started from the same calibration draws x_T^{(k)} ~ p_T:

    min_θ  E(θ) = sqrt( (1/(K d)) Σ_k ‖ Φ_θ(x_T^{(k)}) − Φ*(x_T^{(k)}) ‖² ),

Φ_θ the sampler on grid θ, Φ* the reference flow (scipy DOP853 at rtol 1e-10, plus the sampler's final
Tweedie denoise when it has one). Following Xue et al. 2024 ("Accelerating Diffusion Sampling with
Optimized Time Steps", CVPR) the grid lives in log-SNR λ = log(α/σ): with λ_T, λ_eps the end points,

    λ_i = λ_T + (λ_eps − λ_T) Σ_{j<i} softmax(θ)_j,     i = 0 … N,

so every θ ∈ R^N gives a strictly increasing λ (a strictly decreasing t) with exact end points, and
θ = 0 is the uniform log-SNR grid, where the derivative-free search (scipy Powell or Nelder–Mead) starts.
Per-sample errors are heavy-tailed (a few trajectories change mode), so calibrate on many x_T and
judge the grid on held-out ones. ``basis=k`` searches only smooth changes of the initial grid,
θ = θ_init + Σ_{j=1..k} c_j P_j(u_i) with P_j the Legendre polynomials of the step position u_i ∈ [−1, 1]:
k parameters instead of N, so fewer sampler runs and less room to fit the calibration set's tail.

``method="gits"`` instead picks the sub-grid of a fine log-SNR candidate grid that minimises the summed
one-step DDIM error along pilot trajectories, by dynamic programming (Chen et al. 2024, see :func:`gits_grid`):
one reference solve and one evaluation per candidate, no search.

``method="ays"`` searches the same log-SNR step shares for the least KL-divergence upper bound between the
reverse SDE and its first-order linearisation on the grid (Align Your Steps, Sabour et al. 2024; see
:mod:`.grid_klub`), estimated on the calibration draws' reference samples: an objective of the schedule and the
data alone, the same for every sampler. It is the grid for stochastic samplers: on the eight-Gaussian mixture at 5
steps it cuts the excess cross-entropy of ancestral sampling from 2.4 to 1.2 nats and of SDE-DPM-Solver++ 2M from
1.2 to 0.5 (best default grid), but for ODE solvers' pathwise error the direct search is the one to use (AYS's grid
beat the best default there only for UniPC-3 at 5 steps: 0.095 vs 0.15).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._checks import positive_int
from ..model import ScoreModel
from ..sde import LinearSDE
from .base import FixedStepSampler
from .grids import GridLike, make_grid

#: the reference PF-ODE solve (as in :mod:`sde_diffusion.bench.problems`)
REFERENCE_RTOL = 1e-10
REFERENCE_ATOL = 1e-12
METHODS = ("direct", "gits", "ays")
#: GITS's fine candidate grid: this many log-SNR-uniform intervals from T to eps
GITS_CANDIDATES = 120
#: edge of Nelder–Mead's first simplex in θ (0.5: a λ-step share changes by ~1.6×)
NELDER_MEAD_EDGE = 0.5
SCIPY_METHODS = {"powell": "Powell", "nelder-mead": "Nelder-Mead"}


@dataclass
class GridOptimizationInfo:
    """What the calibration cost and achieved (``optimize(..., return_info=True)``)."""

    initial_rms: float  #: calibration RMS error of the initial grid
    final_rms: float  #: calibration RMS error of the returned grid
    evaluations: int  #: sampler runs (objective evaluations) made by the search
    sampler_nfe: int  #: batched network evaluations spent by those runs
    reference_nfe: int  #: batched network evaluations of the reference solve (0 when ``reference`` was given)
    seconds: float  #: wall-clock time of the whole calibration
    x_T: Tensor  #: the calibration starting points (float64)

    @property
    def nfe(self) -> int:
        """All batched network evaluations the calibration cost."""
        return self.sampler_nfe + self.reference_nfe


def log_snr_grid(sde: LinearSDE, theta: Union[np.ndarray, Tensor]) -> Tensor:
    """The decreasing time grid of λ_i = λ_T + (λ_eps − λ_T) cumsum(softmax θ) (N = len(θ) steps, exact end points)."""
    theta = torch.as_tensor(np.asarray(theta, dtype=np.float64))
    lam_T, lam_eps = sde._log_snr(torch.tensor([sde.T, sde.eps], dtype=torch.float64)).tolist()
    fractions = torch.cat([theta.new_zeros(1), torch.softmax(theta, 0).cumsum(0)])
    t = sde._t_of_log_snr(lam_T + (lam_eps - lam_T) * fractions).clamp(sde.eps, sde.T)
    t[0], t[-1] = sde.T, sde.eps
    return t


def log_snr_parameters(sde: LinearSDE, ts: Tensor) -> np.ndarray:
    """Inverse of :func:`log_snr_grid`: θ_i = log(λ_{i+1} − λ_i), up to the softmax's free constant."""
    lam = sde._log_snr(ts.to(torch.float64))
    return torch.log(lam.diff()).numpy()


def smooth_modes(steps: int, basis: Optional[int]) -> np.ndarray:
    """The (steps, k) directions the search moves θ in: the identity (every step share free) when ``basis`` is None,
    else the Legendre polynomials P_1 … P_k of u = linspace(−1, 1, steps), k = min(basis, steps − 1) (P_0, a
    constant, is the softmax's free direction)."""
    if basis is None:
        return np.eye(steps)
    k = min(basis, steps - 1)
    u = np.linspace(-1.0, 1.0, steps) if steps > 1 else np.zeros(1)
    return np.polynomial.legendre.legvander(u, k)[:, 1:]


def reference_flow(model: ScoreModel, x_T: Tensor, denoise: bool, rtol: float = REFERENCE_RTOL,
                   atol: float = REFERENCE_ATOL, model_kwargs: Optional[Dict[str, Any]] = None,
                   times: Optional[Tensor] = None) -> Tuple[Tensor, int]:
    """Φ*(x_T): the PF-ODE dx/dt = f x − ½ g² s from T to eps with scipy DOP853 (float64), then x̂_0 at eps if
    ``denoise``. Returns (x, batched model evaluations); with decreasing ``times`` (T … eps) x is instead the
    trajectory at those times, shape (len(times), *x_T.shape), and ``denoise`` is ignored."""
    from scipy.integrate import solve_ivp

    sde, shape = model.sde, x_T.shape
    calls = [0]

    def drift(t: float, y: np.ndarray) -> np.ndarray:
        calls[0] += 1
        t64 = torch.tensor(t, dtype=torch.float64)
        x = torch.from_numpy(y).reshape(shape)
        return sde.probability_flow_drift(x, t64, model._predict(x, t64, model_kwargs).score).reshape(-1).numpy()

    t_eval = None if times is None else times.double().numpy()
    with torch.no_grad():
        sol = solve_ivp(drift, (sde.T, sde.eps), x_T.double().reshape(-1).numpy(), method="DOP853", rtol=rtol,
                        atol=atol, t_eval=t_eval)
        if not sol.success:
            raise RuntimeError(f"reference DOP853 PF-ODE solve failed: {sol.message}")
        if times is not None:
            return torch.from_numpy(sol.y.T.copy()).reshape(len(times), *shape), calls[0]
        x = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)
        if denoise:
            calls[0] += 1
            x = model._predict(x, torch.tensor(sde.eps, dtype=torch.float64), model_kwargs).x0
    return x, calls[0]


def pathwise_rms(sampler: FixedStepSampler, model: ScoreModel, grid: GridLike, x_T: Tensor, target: Tensor,
                 model_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[float, int]:
    """sqrt(mean (Φ_grid(x_T) − target)²) of ``sampler`` run on ``grid`` (float64); returns (rms, NFE)."""
    run = copy.copy(sampler)
    run.grid = make_grid(grid, model.sde, sampler.steps)
    run.steps = len(run.grid) - 1
    out = run.sample(model, x_T=x_T, model_kwargs=model_kwargs, dtype=torch.float64)
    rms = float((out.x.double() - target.double()).pow(2).mean().sqrt())
    return (rms if np.isfinite(rms) else float("inf")), out.nfe


def gits_grid(model: ScoreModel, steps: int, trajectory: Tensor, candidates: Tensor,
              model_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[Tensor, int]:
    """GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling", ICML): the
    ``steps``-step sub-grid of ``candidates`` (decreasing, c_0 = T … c_M = eps) minimising the summed local error

        Σ_k  cost(i_k → i_{k+1}),   cost(i → j) = mean ‖ α_j x̂_0(x*_i, c_i) + σ_j ε̂(x*_i, c_i) − x*_j ‖²,

    of one deterministic DDIM step from the pilot trajectory x* (``trajectory[i]`` at ``candidates[i]``),
    found exactly by dynamic programming over (steps taken, candidate reached). Returns (grid, NFE)."""
    sde, m = model.sde, len(candidates) - 1
    if steps > m:
        raise ValueError(f"steps ({steps}) must not exceed the {m} candidate intervals")
    alpha, sigma = sde._log_alpha(candidates).exp(), sde._log_sigma(candidates).exp()
    cost = torch.full((m + 1, m + 1), float("inf"), dtype=torch.float64)
    with torch.no_grad():
        for i in range(m):
            x_i = trajectory[i]
            x0 = model._predict(x_i, torch.tensor(float(candidates[i]), dtype=torch.float64), model_kwargs).x0.double()
            eps = (x_i - alpha[i] * x0) / sigma[i]
            a = alpha[i + 1:].reshape(-1, *([1] * x0.dim()))
            s = sigma[i + 1:].reshape(-1, *([1] * x0.dim()))
            err = a * x0 + s * eps - trajectory[i + 1:]
            cost[i, i + 1:] = err.pow(2).flatten(1).mean(1)
    # best[k, j]: the least cost of reaching candidate j in k steps; parent[k, j] the candidate before it
    best = torch.full((steps + 1, m + 1), float("inf"), dtype=torch.float64)
    parent = torch.zeros((steps + 1, m + 1), dtype=torch.long)
    best[0, 0] = 0.0
    for k in range(1, steps + 1):
        total = best[k - 1][:, None] + cost  # (from i, to j)
        best[k], parent[k] = total.min(0)
    path = [m]
    for k in range(steps, 0, -1):
        path.append(int(parent[k, path[-1]]))
    grid = candidates[torch.tensor(path[::-1])].clone()
    grid[0], grid[-1] = sde.T, sde.eps
    return grid, m


def optimize(
    sampler: FixedStepSampler,
    model: ScoreModel,
    steps: int,
    shape: Sequence[int],
    generator: Optional[torch.Generator] = None,
    n_calibration: int = 256,
    method: str = "direct",
    model_kwargs: Optional[Dict[str, Any]] = None,
    reference: Optional[Callable[[Tensor], Tensor]] = None,
    init: GridLike = "log_snr",
    max_evals: int = 600,
    search: str = "powell",
    return_info: bool = False,
    basis: Optional[int] = None,
) -> Union[Tensor, Tuple[Tensor, GridOptimizationInfo]]:
    """A ``steps``-step grid for ``sampler`` on ``model`` minimising the pathwise RMS error (see the module docstring).

    ``shape`` is the shape of one sample (no batch dimension); the ``n_calibration`` starting points are
    ``model.sde.prior_sample((n_calibration, *shape), generator)`` in float64. ``reference(x_T)`` overrides the
    DOP853 reference flow (it must include the final denoise iff ``sampler.denoise``). ``init`` is the starting grid
    (a name, function or tensor of ``steps + 1`` times); ``search`` is "powell" or "nelder-mead"; ``max_evals``
    bounds the sampler runs; ``basis`` (None: all N log-SNR steps free) restricts the search to that many smooth
    Legendre modes of the step shares (see the module docstring). ``method="gits"`` replaces the search by GITS's
    dynamic programme (:func:`gits_grid`; ``init`` is then only the baseline of ``info.initial_rms``, and
    ``reference``/``search``/``max_evals``/``basis`` are unused); ``method="ays"`` searches (``search``, ``basis``,
    ``max_evals``) for the least KLUB on the reference samples instead of the least pathwise error.
    The sampler should be deterministic (a stochastic one, e.g. ``eta > 0``, makes the objective noisy).
    Returns the decreasing float64 grid (T … eps, ``steps + 1`` points), and with ``return_info`` also a
    :class:`GridOptimizationInfo` with the calibration cost (NFE, seconds) and errors.
    """
    if not isinstance(sampler, FixedStepSampler):
        raise TypeError(f"sampler must be a fixed-step sampler (DPMSolver, UniPC, DDIM, ...), got {type(sampler).__name__}")
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sde_diffusion.ScoreModel, got {type(model).__name__}")
    steps = positive_int(steps, "steps")
    n_calibration = positive_int(n_calibration, "n_calibration")
    max_evals = positive_int(max_evals, "max_evals")
    if basis is not None:
        basis = positive_int(basis, "basis")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if search not in SCIPY_METHODS:
        raise ValueError(f"search must be one of {sorted(SCIPY_METHODS)}, got {search!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if reference is not None and not callable(reference):
        raise TypeError("reference must be None or a callable x_T -> reference x at the end of sampling")
    try:
        shape = tuple(positive_int(s, "shape entries") for s in shape)
    except TypeError as err:
        raise TypeError(f"shape must be a sequence of positive ints (one sample's shape), got {shape!r}") from err

    start = time.perf_counter()
    sde = model.sde
    init_grid = make_grid(init, sde, steps)
    if len(init_grid) != steps + 1:
        raise ValueError(f"init must have steps + 1 = {steps + 1} times, got {len(init_grid)}")
    x_T = sde.prior_sample((n_calibration, *shape), generator, dtype=torch.float64)
    if method == "gits":
        return _optimize_gits(sampler, model, steps, x_T, init_grid, model_kwargs, start, return_info)
    if reference is None:
        target, reference_nfe = reference_flow(model, x_T, sampler.denoise, model_kwargs=model_kwargs)
    else:
        target, reference_nfe = torch.as_tensor(reference(x_T)).detach().double(), 0
        if target.shape != x_T.shape:
            raise ValueError(f"reference(x_T) must have x_T's shape {tuple(x_T.shape)}, got {tuple(target.shape)}")
        if not torch.isfinite(target).all():
            raise ValueError("reference(x_T) contains NaN or Inf")

    theta0 = log_snr_parameters(sde, init_grid)
    theta0 = theta0 - theta0.mean()
    if method == "ays":
        return _optimize_ays(sampler, model, steps, x_T, target, init_grid, theta0, basis, search, max_evals,
                             generator, model_kwargs, reference_nfe, start, return_info)
    spent = {"nfe": 0, "evals": 0}

    def objective(theta: np.ndarray) -> float:
        spent["evals"] += 1
        grid = log_snr_grid(sde, theta)
        if not bool((grid[1:] < grid[:-1]).all()):  # λ-steps below float resolution
            return float("inf")
        rms, nfe = pathwise_rms(sampler, model, grid, x_T, target, model_kwargs)
        spent["nfe"] += nfe
        return rms

    best_theta, best_rms, initial_rms = _search(objective, theta0, basis, search, max_evals)
    grid = log_snr_grid(sde, best_theta)
    if not return_info:
        return grid
    info = GridOptimizationInfo(initial_rms, best_rms, spent["evals"], spent["nfe"], reference_nfe,
                                time.perf_counter() - start, x_T)
    return grid, info


def _search(objective: Callable[[np.ndarray], float], theta0: np.ndarray, basis: Optional[int], search: str,
            max_evals: int) -> Tuple[np.ndarray, float, float]:
    """(best θ, its objective, the objective at θ0): scipy's ``search`` over θ = θ0 + modes @ c from c = 0."""
    from scipy.optimize import minimize

    initial = objective(theta0)
    modes = smooth_modes(len(theta0), basis)
    dim = modes.shape[1]
    options = {"maxfev": max_evals - 1, "xtol": 1e-3, "ftol": 1e-4} if search == "powell" else \
        {"maxfev": max_evals - 1, "xatol": 1e-3, "fatol": 1e-6 * initial, "adaptive": True,
         # scipy's default simplex around c = 0 has edges of 2.5e-4: far too small to leave the start
         "initial_simplex": np.vstack([np.zeros(dim), NELDER_MEAD_EDGE * np.eye(dim)])}
    if dim:
        result = minimize(lambda c: objective(theta0 + modes @ c), np.zeros(dim), method=SCIPY_METHODS[search],
                          options=options)
        if float(result.fun) < initial:
            return theta0 + modes @ result.x, float(result.fun), initial
    return theta0, initial, initial


def _optimize_ays(sampler, model, steps, x_T, target, init_grid, theta0, basis, search, max_evals, generator,
                  model_kwargs, reference_nfe, start, return_info):
    """``method="ays"``: the KLUB of :mod:`.grid_klub` on the reference samples ``target`` (the model's x_0), with
    one fixed pair of forward-process draws per sample; the info's RMS errors are the sampler's pathwise errors."""
    from .grid_klub import KLUB_NODES, klub_terms

    sde = model.sde
    x0 = target.double()
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    bridge = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    spent = {"evals": 0}

    def objective(theta: np.ndarray) -> float:
        spent["evals"] += 1
        grid = log_snr_grid(sde, theta)
        if not bool((grid[1:] < grid[:-1]).all()):
            return float("inf")
        with torch.no_grad():
            value = float(klub_terms(model, grid, x0, noise, bridge, model_kwargs=model_kwargs).sum())
        return value if np.isfinite(value) else float("inf")

    best_theta, _, _ = _search(objective, theta0, basis, search, max_evals)
    grid = log_snr_grid(sde, best_theta)
    if not return_info:
        return grid
    initial_rms, nfe0 = pathwise_rms(sampler, model, init_grid, x_T, target, model_kwargs)
    final_rms, nfe1 = pathwise_rms(sampler, model, grid, x_T, target, model_kwargs)
    klub_nfe = spent["evals"] * 2 * steps * KLUB_NODES  # batched evaluations of the calibration batch's size
    info = GridOptimizationInfo(initial_rms, final_rms, spent["evals"], klub_nfe + nfe0 + nfe1, reference_nfe,
                                time.perf_counter() - start, x_T)
    return grid, info


def _optimize_gits(sampler, model, steps, x_T, init_grid, model_kwargs, start, return_info):
    """``method="gits"``: one pilot DOP853 solve through the candidates, the DP, and the calibration errors."""
    sde = model.sde
    candidates = make_grid("log_snr", sde, max(GITS_CANDIDATES, steps))
    trajectory, reference_nfe = reference_flow(model, x_T, False, model_kwargs=model_kwargs, times=candidates)
    grid, dp_nfe = gits_grid(model, steps, trajectory, candidates, model_kwargs)
    if not return_info:
        return grid
    target = trajectory[-1]
    if sampler.denoise:
        reference_nfe += 1
        with torch.no_grad():
            target = model._predict(target, torch.tensor(sde.eps, dtype=torch.float64), model_kwargs).x0
    initial_rms, nfe0 = pathwise_rms(sampler, model, init_grid, x_T, target, model_kwargs)
    final_rms, nfe1 = pathwise_rms(sampler, model, grid, x_T, target, model_kwargs)
    info = GridOptimizationInfo(initial_rms, final_rms, 2, dp_nfe + nfe0 + nfe1, reference_nfe,
                                time.perf_counter() - start, x_T)
    return grid, info
