"""The stochastic-sampler benchmark: excess cross-entropy per NFE on exact-score mixtures, its noise floor, tuned knobs.

Problems: the solver benchmark's exact-score Gaussian mixtures under VPSDE(0.1, 20), eps = 1e-3 (eight Gaussians in
2-D; four rotated anisotropic Gaussians in 16-D, covariance eigenvalues 1e-3…1), whose data density p is known.

* Headline metric: the excess cross-entropy ΔH = E_q[−log p] − E_q*[−log p] in nats of the sampler's law q, with its
  standard error (:func:`sde_diffusion.metrics.excess_cross_entropy`). q* is what an *exact* sampler outputs: every
  sampler ends with the Tweedie denoise at eps, so q* is x_eps ~ p_eps pushed through x̂_0(·, eps), not p (in 16-D that
  denoise alone moves ΔH against p by ≈ −0.14 nats, several floor sd); E_q*[−log p] comes from a large exact sample.
  ΔH is linear in q, so a sampler's error moves it at first order, its noise is sd(log p)/√n, and it costs one density
  evaluation per sample, so tens of thousands of samples are cheap. It is not a divergence (against p itself it is
  KL(q‖p) + H(q) − H(p)): under-dispersed samplers drive it negative, so samplers are ranked by |ΔH|, and two checks
  catch what it cannot see: the mode-weight total variation ½ Σ_k |E_q r_k − E_q* r_k| (r_k the exact responsibilities
  of the data density) and the energy distance to draws of q* (O(n²), so on a subsample).
* Noise floor: the same metrics for fresh draws of q* of the same size, repeated; |ΔH| within a few floor sd of 0
  is indistinguishable from exact sampling.
* Tuning: per NFE budget each sampler's free knobs (grid, Align Your Steps' KLUB grid among them; SDE-DPM-Solver++ η; EDM churn γ = S_churn/N, its σ̃ window and
  S_noise; the predictor–corrector's snr and predictor; k-diffusion's schedule and η) are chosen by |ΔH| on a
  calibration seed (every candidate on a quarter of the samples, the best two on all of them); the chosen setting
  and the sampler's default are then scored on a different seed.
* NFE: every call of the exact score is counted, the final denoise included; steps are the most that fit the budget.

Run ``sde-diffusion bench stochastic [--quick] [--out DIR]``; writes ``stochastic.md``, ``stochastic.json`` and
``stochastic.png`` to ``benchmarks/results/`` (atomically).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import samplers
from .._checks import positive_int
from .._io import atomic_path, write_text
from ..data.gmm import GaussianMixture, eight_gaussians
from ..metrics import Estimate, cross_entropy, energy_distance, excess_cross_entropy
from ..model import ScoreModel
from ..samplers.grid_optimize import optimize
from ..sde import VPSDE, LinearSDE
from . import peers
from ._standalone import entry_points, jsonable, machine, torch_threads
from .problems import CallCounter, anisotropic_mixture

DEFAULT_OUT = "benchmarks/results"
FULL_BUDGETS = (10, 20, 50, 100, 200, 500)
QUICK_BUDGETS = (10, 20)
ENTROPY_SAMPLES = 400_000
ENERGY_SAMPLES = 4000
FLOOR_REPEATS = 10
SCREEN_FRACTION = 4  #: screening runs on n // SCREEN_FRACTION samples
FINALISTS = 2
NOISE_SEED_OFFSET = 10_000  #: the sampler noise seed is the x_T seed + this
ADAPTIVE_TOLERANCES = ((1e-1, 1e-2), (5e-2, 5e-3), (2e-2, 2e-3), (1e-2, 1e-3))
QUICK_ADAPTIVE_TOLERANCES = ((1e-1, 1e-2),)
#: the "ays" grid candidate: ``grids.optimize(method="ays")`` on AYS_CALIBRATION prior draws from seed AYS_SEED (never
#: an evaluation or noise seed), 4 smooth modes, ≤ 100 KLUB evaluations; fitted up to AYS_MAX_STEPS steps
AYS_CALIBRATION, AYS_SEED, AYS_MAX_STEPS = 256, 20_011, 50
#: a margin counts when it exceeds this many floor sd (the difference of two independent estimates has sd √2·floor)
SIGNIFICANT = 3.0


# ---------------------------------------------------------------------------------------------
# the exact model and the target
# ---------------------------------------------------------------------------------------------
class MixtureScore:
    """The exact ∇ log p_t of a :class:`GaussianMixture` under a linear SDE, as two matrix products per batch.

    The formula of ``GaussianMixture.score``, −Σ_k r_k(x) U_k diag(α²λ_k + σ²)⁻¹ U_kᵀ (x − α μ_k), with the K
    eigenbases stacked into one D × KD matrix [U_1 … U_K] so that a batch costs two GEMMs instead of K small batched
    products (2× faster in 2-D, 10× in 16-D on CPU). One time for the whole batch is the fast path (samplers pass
    that); per-sample times work too. Float64 inside, returned in x's dtype.
    """

    def __init__(self, gmm: GaussianMixture, sde: LinearSDE):
        k, d = gmm.means.shape
        self.gmm, self.sde, self.k, self.d = gmm, sde, k, d
        self.bases = gmm.eigvecs.permute(1, 0, 2).reshape(d, k * d)
        self.neg_bases_t = -self.bases.T.contiguous()
        self.rotated_means = torch.einsum("kd,kde->ke", gmm.means, gmm.eigvecs)  # U_kᵀ μ_k
        self.half_block_sum = -0.5 * torch.kron(torch.eye(k, dtype=torch.float64), torch.ones(d, 1, dtype=torch.float64))
        self.log_weights = gmm.weights.log()

    def __call__(self, x: Tensor, t) -> Tensor:
        t64 = torch.as_tensor(t, dtype=torch.float64).cpu().reshape(-1)
        if bool((t64 == t64[0]).all()):
            t64 = t64[:1]
        alpha = self.sde._log_alpha(t64).exp().reshape(-1, 1, 1)
        sigma = self.sde._log_sigma(t64).exp().reshape(-1, 1, 1)
        b, kd = x.shape[0], self.k * self.d
        z = (x.reshape(b, -1).double().cpu() @ self.bases).reshape(b, self.k, self.d) - alpha * self.rotated_means
        var = alpha**2 * self.gmm.eigvals + sigma**2  # (1 | B, K, D)
        w = z / var
        log_c = ((z * w).reshape(b, kd) @ self.half_block_sum + var.log().reshape(-1, kd) @ self.half_block_sum
                 + self.log_weights)
        resp = torch.softmax(log_c, dim=1)
        score = (resp[:, :, None] * w).reshape(b, kd) @ self.neg_bases_t
        return score.reshape(x.shape).to(device=x.device, dtype=x.dtype)


def counted_model(gmm: GaussianMixture, sde: LinearSDE) -> Tuple[ScoreModel, CallCounter]:
    """The exact-score model of ``gmm`` and the counter of its evaluations (one call = one NFE)."""
    counter = CallCounter(MixtureScore(gmm, sde))
    return ScoreModel.from_score_fn(counter, sde), counter


def occupancy(gmm: GaussianMixture, x: Tensor) -> Tensor:
    """mean_x r_k(x): the average exact responsibility of each component of the data density (under p it is w_k)."""
    flat = x.reshape(x.shape[0], -1).double()
    log_c, _, _ = gmm._log_components(flat, torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    return torch.softmax(log_c, 1).mean(0)


@dataclass
class Target:
    """A mixture p and what a sampler's output is scored against: the law q* an *exact* sampler outputs.

    Every sampler here ends with the Tweedie denoise x̂_0(x_eps, eps) (k-diffusion: its last step from σ̃(eps) to 0),
    so exact sampling means x_eps ~ p_eps, then that denoise: x̂_0 = E[x_0 | x_eps] is not a draw of p but is
    shrunk toward the component means (by λ/(λ + σ²(eps)/α²) along an eigen-direction of variance λ).
    ``reference`` = E_q*[−log p], ``occupancy`` = E_q* r_k and ``energy_reference`` (draws of q*) come from q*;
    ``entropy`` = H(p), so ``reference.value − entropy.value`` is what the final denoise alone does to ΔH against p.
    """

    name: str
    description: str
    gmm: GaussianMixture
    sde: LinearSDE
    reference: Estimate = Estimate(0.0, 0.0)
    entropy: Estimate = Estimate(0.0, 0.0)
    occupancy: Optional[Tensor] = None
    energy_reference: Optional[Tensor] = None
    ays: Dict[int, Tuple[Tensor, Dict[str, float]]] = field(default_factory=dict)  #: steps → (AYS grid, its cost)

    @property
    def dim(self) -> int:
        return self.gmm.dim

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.cat([self.gmm.log_prob(chunk) for chunk in x.double().split(50_000)])

    def exact_output(self, n: int, generator: torch.Generator) -> Tensor:
        """n draws of q*: x_0 ~ p, x_eps = α x_0 + σ z, then the exact x̂_0(x_eps, eps) (float64)."""
        eps = torch.tensor(self.sde.eps, dtype=torch.float64)
        alpha, sigma = float(self.sde._log_alpha(eps).exp()), float(self.sde._log_sigma(eps).exp())
        x0 = self.gmm.sample(n, generator, dtype=torch.float64)
        x_eps = alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        score = MixtureScore(self.gmm, self.sde)
        return torch.cat([(x + sigma**2 * score(x, eps)) / alpha for x in x_eps.split(50_000)])

    def ays_grid(self, steps: int) -> Tensor:
        """Align Your Steps' grid for the exact model at ``steps`` steps (fitted once; its cost kept in ``self.ays``)."""
        if steps not in self.ays:
            grid, info = optimize(samplers.DDIM(steps=steps), self.gmm.score_model(self.sde), steps, (self.dim,),
                                  generator=torch.Generator().manual_seed(AYS_SEED), n_calibration=AYS_CALIBRATION,
                                  method="ays", basis=4, max_evals=100, return_info=True)
            self.ays[steps] = grid, {"nfe": info.nfe, "seconds": info.seconds}
        return self.ays[steps][0]

    def score(self, x: Tensor, energy: bool = True) -> Dict[str, float]:
        """ΔH = E_q[−log p] − E_q*[−log p] ± se (nats), the mode-weight TV ½ Σ_k |E_q r_k − E_q* r_k| and (if
        ``energy``) the energy distance of the first samples to draws of q*."""
        dh = excess_cross_entropy(x, self.log_prob, self.reference)
        out = {"dh": dh.value, "se": dh.se, "mode_tv": float(0.5 * (occupancy(self.gmm, x) - self.occupancy).abs().sum())}
        if energy:
            out["energy"] = energy_distance(x[: self.energy_reference.shape[0]], self.energy_reference)
        return out


def make_target(name: str, description: str, gmm: GaussianMixture, seed: int, entropy_samples: int = ENTROPY_SAMPLES,
                energy_samples: int = ENERGY_SAMPLES, sde: Optional[LinearSDE] = None) -> Target:
    """A :class:`Target` with its q* statistics from ``entropy_samples`` exact outputs (seeds seed + 7, + 8, + 9)."""
    sde = VPSDE(0.1, 20.0, eps=1e-3) if sde is None else sde
    target = Target(name, description, gmm, sde)
    exact = target.exact_output(entropy_samples, torch.Generator().manual_seed(seed + 7))
    target.reference, target.occupancy = cross_entropy(exact, target.log_prob), occupancy(gmm, exact)
    target.energy_reference = target.exact_output(energy_samples, torch.Generator().manual_seed(seed + 8))
    target.entropy = cross_entropy(gmm.sample(entropy_samples, torch.Generator().manual_seed(seed + 9), dtype=torch.float64),
                                   target.log_prob)
    return target


def default_targets(seed: int = 0, dim: int = 16, **sizes) -> Dict[str, Target]:
    """The solver benchmark's two mixtures (:func:`sde_diffusion.bench.problems.default_problems`)."""
    return {
        "gmm2d": make_target("gmm2d", "eight Gaussians (radius 2, std 0.2), 2-D", eight_gaussians(), seed, **sizes),
        f"gmm{dim}d": make_target(f"gmm{dim}d", f"4 Gaussians, {dim}-D, random rotations, covariance eigenvalues 1e-3…1",
                                  anisotropic_mixture(dim=dim, seed=seed), seed, **sizes),
    }


def _summary(values: Sequence[float]) -> Dict[str, float]:
    v = torch.tensor(list(values), dtype=torch.float64)
    return {"mean": float(v.mean()), "sd": float(v.std()) if len(v) > 1 else math.nan, "min": float(v.min()),
            "max": float(v.max()), "repeats": len(v)}


def noise_floor(target: Target, n: int, repeats: int, seed: int) -> Dict[str, Dict[str, float]]:
    """Every metric for ``repeats`` independent draws of n exact outputs (q*): {metric: {mean, sd, min, max, repeats}}."""
    draws = [target.score(target.exact_output(n, torch.Generator().manual_seed(seed + r))) for r in range(repeats)]
    return {key: _summary([d[key] for d in draws]) for key in ("dh", "mode_tv", "energy")}


# ---------------------------------------------------------------------------------------------
# samplers and their knobs
# ---------------------------------------------------------------------------------------------
@dataclass
class Setting:
    """One sampler configuration: ours by registry name, or a k-diffusion ``sample_<name>`` (``schedule`` in options).

    NFE = per_step · steps + extra; ``churn_per_step`` in options becomes Heun's S_churn = γ · steps.
    """

    family: str  #: "ours", "k-diffusion" or "ours (ODE)"
    sampler: str  #: display name
    name: str
    options: Dict[str, Any]
    label: str  #: the knobs, for the report
    per_step: int = 1
    extra: int = 1

    def kwargs(self, steps: int) -> Dict[str, Any]:
        opts = dict(self.options)
        if "churn_per_step" in opts:
            opts["s_churn"] = opts.pop("churn_per_step") * steps
        return opts


@dataclass
class Family:
    """A sampler with its default setting and the candidates its knobs are tuned over (the default among them)."""

    family: str
    sampler: str
    default: Setting
    candidates: List[Setting] = field(default_factory=list)
    tuned: bool = True


def _window(lo: float, hi: float) -> str:
    return "all σ̃" if lo == 0 and math.isinf(hi) else f"σ̃ ∈ [{lo:g}, {hi:g}]"


def families(quick: bool = False, only: Optional[Sequence[str]] = None) -> List[Family]:
    """Our stochastic samplers, k-diffusion's, and two ODE solvers as references (not tuned); ``quick``: 3 candidates
    each; ``only``: the samplers whose display name contains one of these strings (case-insensitive)."""
    grids = ("uniform", "quadratic", "log_snr", "karras", "ays")
    out: List[Family] = []

    def family(sampler: str, name: str, default: Dict[str, Any], space: List[Dict[str, Any]], label: Callable,
               per_step: int = 1, fam: str = "ours", tuned: bool = True):
        make = lambda opts: Setting(fam, sampler, name, opts, label(opts), per_step)  # noqa: E731
        candidates = [make(default)] + [make(o) for o in space if o != default]
        out.append(Family(fam, sampler, candidates[0], candidates[:3] if quick else candidates, tuned))

    for sampler, name in (("Euler–Maruyama", "euler_maruyama"), ("DDPM (ancestral)", "ddpm")):
        family(sampler, name, {"grid": "uniform"}, [{"grid": g} for g in grids], lambda o: o["grid"])
    for order in (2, 3):
        family(f"SDE-DPM-Solver++({order}M)", "dpm_solver", {"order": order, "eta": 1.0, "grid": "log_snr"},
               [{"order": order, "eta": eta, "grid": g} for eta in (1.0, 0.75, 0.5, 0.25) for g in ("log_snr", "karras", "quadratic", "ays")],
               lambda o: f"η={o['eta']:g}, {o['grid']}")
    edm = {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}  # EDM's ImageNet-64 setting (Karras et al. 2022, Table 5)
    churn = [{"churn_per_step": g, "s_tmin": lo, "s_tmax": hi, "s_noise": 1.0}
             for g in (math.sqrt(2) - 1, 0.2, 0.1, 0.03) for lo, hi in ((0.0, math.inf), (0.05, 50.0), (0.01, 1.0))]
    family("Heun + churn (EDM)", "heun", edm, churn,
           lambda o: (f"S_churn={o['s_churn']:g}" if "s_churn" in o else f"γ={o['churn_per_step']:.2g}")
           + f", {_window(o['s_tmin'], o['s_tmax'])}, S_noise={o['s_noise']:g}", per_step=2)
    family("Predictor–corrector (Langevin)", "predictor_corrector",
           {"predictor": "reverse_diffusion", "snr": 0.16, "grid": "uniform"},
           [{"predictor": p, "snr": snr, "grid": g} for p in ("reverse_diffusion", "euler_maruyama")
            for snr in (0.16, 0.04, 0.01) for g in ("uniform", "log_snr")],
           lambda o: f"{o['predictor']}, snr={o['snr']:g}, {o['grid']}", per_step=2)
    if peers.k_diffusion_available():
        for name, per_step in (("euler_ancestral", 1), ("dpmpp_2m_sde", 1), ("dpmpp_3m_sde", 1), ("dpmpp_sde", 2)):
            family(name, name, {"schedule": "karras", "eta": 1.0},
                   [{"schedule": s, "eta": eta} for s in ("karras", "exponential") for eta in (1.0, 0.75, 0.5)],
                   lambda o: f"{o['schedule']}, η={o['eta']:g}", per_step=per_step, fam="k-diffusion")
    family("DPM-Solver++(3M) ODE", "dpm_solver", {"order": 3, "grid": "log_snr"}, [], lambda o: "log_snr",
           fam="ours (ODE)", tuned=False)
    family("UniPC-3 bh2 ODE", "unipc", {"order": 3, "variant": "bh2", "grid": "log_snr"}, [], lambda o: "log_snr",
           fam="ours (ODE)", tuned=False)
    if only:
        out = [f for f in out if any(word.lower() in f.sampler.lower() for word in only)]
    return out


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------
def draw(setting: Setting, model: ScoreModel, dim: int, steps: int, n: int, seed: int) -> Tensor:
    """n samples of ``setting`` with ``steps`` steps: x_T ~ prior from ``seed``, the noise from seed + NOISE_SEED_OFFSET."""
    sde = model.sde
    x_T = sde.prior_sample((n, dim), torch.Generator().manual_seed(seed))
    noise_seed = seed + NOISE_SEED_OFFSET
    if setting.family == "k-diffusion":
        kwargs = dict(setting.options)
        den = peers.KarrasDenoiser(model)
        sigmas = peers.k_diffusion_sigmas(kwargs.pop("schedule"), steps, den.sigma_tilde(sde.eps), den.sigma_tilde(sde.T))
        return peers.run_k_diffusion(setting.name, model, x_T, sigmas, seed=noise_seed, **kwargs)[0]
    sampler = samplers.get(setting.name, steps=steps, **setting.kwargs(steps))
    return sampler.sample(model, x_T=x_T, generator=torch.Generator().manual_seed(noise_seed)).x


def _failed(point: Dict[str, Any], reason: str) -> Dict[str, Any]:
    point.update(failure=reason, dh=math.inf, se=math.nan, mode_tv=math.nan)
    return point


def measure(setting: Setting, target: Target, model: ScoreModel, counter: CallCounter, budget: int, n: int, seed: int,
            energy: bool = True) -> Dict[str, Any]:
    """The most steps with counted NFE ≤ budget (re-run with fewer if the count overshoots), scored against ``target``.

    A failing or non-finite run is a result (``failure`` set, ΔH = inf), not a crash."""
    steps = (budget - setting.extra) // setting.per_step
    point: Dict[str, Any] = {"budget": budget, "n": n, "seed": seed, "failure": ""}
    while steps >= 1:
        start, before = time.perf_counter(), counter.calls
        point.update(steps=steps, label=setting.label)
        run = setting
        if setting.options.get("grid") == "ays":
            if steps > AYS_MAX_STEPS:
                return _failed(point, f"AYS grids are fitted up to {AYS_MAX_STEPS} steps")
            run = replace(setting, options=dict(setting.options, grid=target.ays_grid(steps)))
        try:
            x = draw(run, model, target.dim, steps, n, seed)
        except Exception as exc:  # noqa: BLE001 — a diverging sampler is a finding
            return _failed(point, f"{type(exc).__name__}: {exc}")
        point.update(nfe=counter.calls - before, seconds=time.perf_counter() - start)
        if point["nfe"] <= budget:
            break
        steps -= 1
    else:
        return _failed(point, f"no step count fits NFE {budget}")
    if not torch.isfinite(x).all():
        return _failed(point, "non-finite samples")
    try:
        point.update(target.score(x, energy=energy))
    except ValueError as exc:  # samples so far out that log p overflows
        return _failed(point, str(exc))
    return point


def _key(point: Dict[str, Any]) -> float:
    return abs(point["dh"]) if math.isfinite(point["dh"]) else math.inf


def tune(fam: Family, target: Target, model: ScoreModel, counter: CallCounter, budget: int, n: int, seed: int,
         finalists: int = FINALISTS, screen_fraction: int = SCREEN_FRACTION) -> Tuple[Setting, List[Dict[str, Any]]]:
    """The candidate with the smallest |ΔH| on the calibration ``seed``: every candidate on n // screen_fraction samples,
    the best ``finalists`` of them again on n. Returns (setting, every calibration run)."""
    runs: List[Dict[str, Any]] = []
    pool = list(fam.candidates)
    if len(pool) > finalists:
        screen_n = max(n // screen_fraction, 2)
        screened = [(c, measure(c, target, model, counter, budget, screen_n, seed, energy=False)) for c in pool]
        runs += [dict(p, stage="screen") for _, p in screened]
        pool = [c for c, _ in sorted(screened, key=lambda cp: _key(cp[1]))[:finalists]]
    finals = [(c, measure(c, target, model, counter, budget, n, seed, energy=False)) for c in pool]
    runs += [dict(p, stage="final") for _, p in finals]
    return min(finals, key=lambda cp: _key(cp[1]))[0], runs


def run_adaptive(target: Target, model: ScoreModel, counter: CallCounter, tolerances, n: int, seed: int) -> List[Dict[str, Any]]:
    """The adaptive reverse-SDE solver (Gotta Go Fast) over (rtol, atol) pairs, on ``seed`` like :func:`draw`."""
    out = []
    for rtol, atol in tolerances:
        start, before = time.perf_counter(), counter.calls
        point: Dict[str, Any] = {"rtol": rtol, "atol": atol, "n": n, "seed": seed, "failure": ""}
        try:
            x = samplers.get("adaptive_sde", rtol=rtol, atol=atol).sample(
                model, x_T=target.sde.prior_sample((n, target.dim), torch.Generator().manual_seed(seed)),
                generator=torch.Generator().manual_seed(seed + NOISE_SEED_OFFSET)).x
        except Exception as exc:  # noqa: BLE001
            out.append(_failed(point, f"{type(exc).__name__}: {exc}"))
            continue
        point.update(nfe=counter.calls - before, seconds=time.perf_counter() - start)
        if torch.isfinite(x).all():
            point.update(target.score(x))
        else:
            _failed(point, "non-finite samples")
        out.append(point)
    return out


def run_target(target: Target, budgets: Sequence[int], n: int, seed: int, quick: bool, log=print,
               floor_repeats: int = FLOOR_REPEATS, only: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Floor, then per family and budget: tuned on the calibration seed (seed + 1), default and tuned on seed + 2."""
    model, counter = counted_model(target.gmm, target.sde)
    calibration, evaluation = seed + 1, seed + 2
    log(f"[{target.name}] noise floor: {floor_repeats} exact draws of {n}")
    result: Dict[str, Any] = {"floor": noise_floor(target, n, floor_repeats, seed + 100), "families": []}
    for fam in families(quick, only):
        start = time.perf_counter()
        rows: Dict[str, Any] = {}
        for budget in budgets:
            default = measure(fam.default, target, model, counter, budget, n, evaluation)
            cell: Dict[str, Any] = {"default": default, "calibration": []}
            if fam.tuned:
                best, cell["calibration"] = tune(fam, target, model, counter, budget, n, calibration)
                cell["tuned"] = default if best is fam.default else measure(best, target, model, counter, budget, n, evaluation)
            rows[str(budget)] = cell
        result["families"].append({"family": fam.family, "sampler": fam.sampler, "default": fam.default.label,
                                   "tuned": fam.tuned, "budgets": rows})
        log(f"[{target.name}] {fam.family} {fam.sampler}: {time.perf_counter() - start:.0f}s")
    tolerances = QUICK_ADAPTIVE_TOLERANCES if quick else ADAPTIVE_TOLERANCES
    result["adaptive"] = run_adaptive(target, model, counter, tolerances, n, evaluation)
    result["headline"] = headline(result, budgets)
    return result


# ---------------------------------------------------------------------------------------------
# summarising
# ---------------------------------------------------------------------------------------------
def _final(cell: Dict[str, Any]) -> Dict[str, Any]:
    return cell.get("tuned", cell["default"])


def headline(result: Dict[str, Any], budgets: Sequence[int]) -> Dict[str, Any]:
    """Per budget: the stochastic samplers ranked by held-out |ΔH| (tuned), margins in floor sd; and tuning's effect."""
    floor_sd = result["floor"]["dh"]["sd"]
    best = []
    for budget in budgets:
        ranked = sorted(((abs(_final(f["budgets"][str(budget)])["dh"]), f) for f in result["families"]
                         if f["tuned"] and math.isfinite(_final(f["budgets"][str(budget)])["dh"])), key=lambda af: af[0])
        if not ranked:
            continue
        (first, f1), rest = ranked[0], ranked[1:]
        entry = {"budget": budget, "best": f"{f1['family']} {f1['sampler']}", "setting": _final(f1["budgets"][str(budget)])["label"],
                 "dh": _final(f1["budgets"][str(budget)])["dh"], "dh_in_floor_sd": first / floor_sd}
        if rest:
            entry.update(runner_up=f"{rest[0][1]['family']} {rest[0][1]['sampler']}", margin_in_floor_sd=(rest[0][0] - first) / floor_sd)
        ours = [a for a, f in ranked if f["family"] == "ours"]
        theirs = [a for a, f in ranked if f["family"] == "k-diffusion"]
        if ours and theirs:
            entry["best_ours_minus_best_peer_in_floor_sd"] = (ours[0] - theirs[0]) / floor_sd
        ode = [abs(_final(f["budgets"][str(budget)])["dh"]) for f in result["families"] if f["family"] == "ours (ODE)"]
        if ode and math.isfinite(min(ode)):
            entry["best_minus_best_ode_in_floor_sd"] = (first - min(ode)) / floor_sd
        best.append(entry)
    gains = []
    for f in result["families"]:
        if not f["tuned"]:
            continue
        for budget in budgets:
            cell = f["budgets"][str(budget)]
            d, t = abs(cell["default"]["dh"]), abs(cell["tuned"]["dh"])
            if math.isfinite(t):
                gains.append({"sampler": f"{f['family']} {f['sampler']}", "budget": budget,
                              "gain_in_floor_sd": (d - t) / floor_sd if math.isfinite(d) else math.inf,
                              "same_setting": cell["tuned"]["label"] == cell["default"]["label"]})
    changed = [g for g in gains if not g["same_setting"]]
    summary = {"cells": len(gains), "changed": len(changed),
               "better": sum(g["gain_in_floor_sd"] > SIGNIFICANT for g in changed),
               "worse": sum(g["gain_in_floor_sd"] < -SIGNIFICANT for g in changed)}
    return {"best": best, "tuning": gains, "tuning_summary": summary}


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------
def _cell(point: Dict[str, Any], budget: int) -> str:
    if point.get("failure"):
        return "failed"
    text = f"{point['dh']:+.2e} ±{point['se']:.0e}"
    return text + (f" ({point['nfe']})" if point["nfe"] != budget else "")


def _table(result: Dict[str, Any], budgets: Sequence[int], which: str) -> List[str]:
    lines = ["| family | sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]
    for f in result["families"]:
        if which == "tuned" and not f["tuned"]:
            continue
        cells = [_cell(f["budgets"][str(b)][which], b) for b in budgets]
        lines.append(f"| {f['family']} | {f['sampler']} | " + " | ".join(cells) + " |")
    return lines


def _settings_table(result: Dict[str, Any], budgets: Sequence[int]) -> List[str]:
    lines = ["| sampler | default | " + " | ".join(f"NFE {b}" for b in budgets) + " |", "|---|---|" + "---|" * len(budgets)]
    for f in result["families"]:
        if f["tuned"]:
            cells = [f["budgets"][str(b)]["tuned"]["label"] + (f" ({f['budgets'][str(b)]['tuned']['steps']} steps)") for b in budgets]
            lines.append(f"| {f['family']} {f['sampler']} | {f['default']} | " + " | ".join(cells) + " |")
    return lines


def _checks_table(result: Dict[str, Any], budgets: Sequence[int]) -> List[str]:
    fl = result["floor"]
    lines = ["Cells: `mode-weight TV / energy distance` of the tuned setting on the held-out seed; **bold** where a value "
             f"exceeds the floor's largest draw (TV {fl['mode_tv']['max']:.2g}, energy {fl['energy']['max']:.2g}).", "",
             "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]

    def mark(value: float, limit: float, fmt: str) -> str:
        return "—" if value is None or not math.isfinite(value) else (f"**{value:{fmt}}**" if value > limit else f"{value:{fmt}}")

    for f in result["families"]:
        cells = []
        for b in budgets:
            p = _final(f["budgets"][str(b)])
            cells.append("failed" if p.get("failure") else
                         f"{mark(p['mode_tv'], fl['mode_tv']['max'], '.3f')} / {mark(p.get('energy'), fl['energy']['max'], '.1e')}")
        lines.append(f"| {f['family']} {f['sampler']} | " + " | ".join(cells) + " |")
    return lines


def markdown_report(report: Dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# Stochastic samplers on exact-score mixtures: excess cross-entropy per NFE, tuned", "",
        f"Command: `{meta['command']}` — {meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s), "
        f"k-diffusion {meta['k_diffusion'] or 'not installed'}; wall time {meta['seconds'] / 60:.1f} min.", "",
        "**Metric (headline): excess cross-entropy** ΔH = E_q[−log p] − E_q*[−log p] in nats ± its standard error",
        "(independent samples); q is the sampler's law, p the exact data density and q* the law an *exact* sampler outputs:",
        "x_eps ~ p_eps followed by the Tweedie denoise x̂_0(x_eps, eps) that every sampler here ends with (k-diffusion: its",
        "last step from σ̃(eps) to 0). That denoise shrinks each component toward its mean, so q* ≠ p; the shift it alone",
        "causes, E_q*[−log p] − H(p), is given per problem below (in 16-D, where covariance eigenvalues reach 1e-3, it is",
        "several floor sd, so scoring against p would reward under-dispersed samplers). ΔH is zero for exact sampling,",
        "positive for over-dispersed samplers and **negative for under-dispersed ones** (mass piled onto the modes): it is",
        "not a divergence, so samplers are ranked by |ΔH| (for a pure scale error of the modes in d dimensions",
        "KL ≈ ΔH²/d, so |ΔH| orders those as KL does; for shifted modes of the right shape ΔH ≈ KL). It is the headline",
        "because it is linear in q (errors show at first order), its noise is sd(log p)/√n, and it costs one density",
        "evaluation per sample, so its floor can be pushed below the differences between samplers, where the sliced-W2",
        f"panel of the solver benchmark and the energy distance (O(n²), so on {meta['energy_samples']} samples here) sit at",
        "their floors from NFE ≈ 20–50 on. Checks for what ΔH cannot see (mass moved between modes of equal density):",
        "the **mode-weight TV** ½Σ_k|E_q r_k − E_q* r_k| (r_k: exact responsibilities of p) and the **energy distance**",
        "to draws of q*.", "",
        "**Floor**: the same metrics for independent draws of q* of the same size. **Tuning**: per NFE, each sampler's knobs",
        f"chosen by |ΔH| on the calibration seed (seed + 1: all candidates on n/{SCREEN_FRACTION}, the best {FINALISTS} on n), then the",
        "chosen and the default setting scored on the held-out seed (seed + 2); all tables below are held-out. A cell",
        "reads `ΔH ±se (NFE used, when under the budget)`. NFE counts every exact-score call, the final denoise included.",
        f"Margins are in floor sd; a difference of two independent estimates has sd √2·floor, so > {SIGNIFICANT:g} is significant.", "",
    ]
    for name, res in report["problems"].items():
        budgets, fl = res["budgets"], res["floor"]
        lines += [f"## {name}: {res['description']}", "",
                  f"{res['n']} samples per run, D = {res['dim']}; E_q*[−log p] = {res['reference']['value']:.4f} ± "
                  f"{res['reference']['se']:.4f} nats from {meta['entropy_samples']} exact outputs; H(p) = {res['entropy']['value']:.4f} ± "
                  f"{res['entropy']['se']:.4f}, so the final denoise alone shifts ΔH against p by {res['denoise_shift']:+.4f}.", "",
                  f"**Floor** ({fl['dh']['repeats']} draws of {res['n']} exact outputs): ΔH mean {fl['dh']['mean']:+.1e}, "
                  f"**sd {fl['dh']['sd']:.1e}** (range {fl['dh']['min']:+.1e} … {fl['dh']['max']:+.1e}); mode-weight TV "
                  f"{fl['mode_tv']['mean']:.3f} (max {fl['mode_tv']['max']:.3f}); energy distance on {meta['energy_samples']} "
                  f"{fl['energy']['mean']:+.1e} (sd {fl['energy']['sd']:.1e}, max {fl['energy']['max']:.1e}).", "",
                  "### Best stochastic sampler per NFE (tuned, held-out seed)", ""]
        for e in res["headline"]["best"]:
            text = (f"- NFE {e['budget']}: **{e['best']}** ({e['setting']}), ΔH {e['dh']:+.2e} = {e['dh_in_floor_sd']:.1f} floor sd from exact")
            if "runner_up" in e:
                text += f"; ahead of {e['runner_up']} by {e['margin_in_floor_sd']:.1f} floor sd"
            if "best_ours_minus_best_peer_in_floor_sd" in e:
                text += f"; best ours − best k-diffusion: {e['best_ours_minus_best_peer_in_floor_sd']:+.1f} floor sd"
            if "best_minus_best_ode_in_floor_sd" in e:
                text += f"; minus the best ODE solver: {e['best_minus_best_ode_in_floor_sd']:+.1f} floor sd"
            lines.append(text + ".")
        s = res["headline"]["tuning_summary"]
        lines += ["", f"Tuning on the held-out seed: the tuned setting differs from the default in {s['changed']} of {s['cells']} "
                      f"(sampler, NFE) cells; of those, {s['better']} are better by > {SIGNIFICANT:g} floor sd and {s['worse']} worse by "
                      f"> {SIGNIFICANT:g} floor sd.", "",
                  "### Tuned settings (held-out seed)", ""] + _table(res, budgets, "tuned")
        ays = res.get("ays_calibration") or {}
        if ays:
            lines += ["", f"AYS grids (`grids.optimize(method=\"ays\")`, {AYS_CALIBRATION} prior draws from seed {AYS_SEED}, one per "
                          "step count, shared by the samplers; cost not in the NFE columns): " + ", ".join(
                              f"{k} steps {v['nfe']} NFE / {v['seconds']:.1f} s" for k, v in ays.items()) + "."]
        lines += ["", "### Default settings (held-out seed)", ""] + _table(res, budgets, "default")
        lines += ["", "### Chosen knobs", ""] + _settings_table(res, budgets)
        lines += ["", "### Checks: mode weights and energy distance", ""] + _checks_table(res, budgets)
        lines += ["", "### Adaptive reverse-SDE solver (Gotta Go Fast), held-out seed", "",
                  "| rtol | atol | NFE | ΔH ± se | mode TV | energy |", "|---|---|---|---|---|---|"]
        for p in res["adaptive"]:
            lines.append("| {rtol:g} | {atol:g} | ".format(**p) + ("failed | | | |" if p["failure"] else
                         f"{p['nfe']} | {p['dh']:+.2e} ± {p['se']:.0e} | {p['mode_tv']:.3f} | {p['energy']:.1e} |"))
        lines.append("")
    return "\n".join(lines)


def plot(report: Dict[str, Any], path: Path) -> None:
    """|ΔH| vs NFE per problem (log–log), defaults above, tuned below; open markers where ΔH < 0; the floor sd shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["problems"])
    fig, axes = plt.subplots(2, len(names), figsize=(7.5 * len(names), 10), squeeze=False)
    for col, name in enumerate(names):
        res = report["problems"][name]
        sd = res["floor"]["dh"]["sd"]
        for row, which in enumerate(("default", "tuned")):
            ax = axes[row][col]
            colors = iter(plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors)
            lowest = math.inf
            for f in res["families"]:
                pts = [f["budgets"][str(b)].get(which, f["budgets"][str(b)]["default"]) for b in res["budgets"]]
                pts = [p for p in pts if not p["failure"] and math.isfinite(p["dh"])]
                if not pts:
                    continue
                color = "0.5" if f["family"] == "ours (ODE)" else next(colors)
                ls = {"ours": "-", "k-diffusion": "--"}.get(f["family"], ":")
                xs, ys = [p["nfe"] for p in pts], [max(abs(p["dh"]), 1e-6) for p in pts]
                lowest = min(lowest, *ys)
                ax.plot(xs, ys, ls=ls, color=color, lw=1.3, label=("" if f["family"] == "ours" else f"{f['family']}: ") + f["sampler"])
                for positive in (True, False):
                    sel = [(x, y) for x, y, p in zip(xs, ys, pts) if (p["dh"] > 0) == positive]
                    if sel:
                        ax.plot(*zip(*sel), ls="none", marker="o", ms=4, color=color, mfc=color if positive else "none")
            ax.axhspan(1e-6, 2 * sd, color="k", alpha=0.08, label="2 × floor sd (exact draws)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(max(min(sd / 3, lowest / 2), 1e-6), None)
            ax.set_xlabel("NFE")
            ax.set_ylabel("|excess cross-entropy| (nats); open marker: ΔH < 0")
            ax.set_title(f"{name}: {which} settings (held-out seed)", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6.5, ncol=2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.06, top=0.96, wspace=0.18, hspace=0.2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="smoke test: NFE 10 and 20, 3 candidates per sampler, few samples")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for stochastic.md/.json/.png (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="base seed: calibration seed + 1, held-out seed + 2 (default: %(default)s)")
    parser.add_argument("--n2", type=int, default=None, help="samples per run in 2-D (default: 20000; --quick: 2000)")
    parser.add_argument("--n16", type=int, default=None, help="samples per run in 16-D (default: 16000; --quick: 1000)")
    parser.add_argument("--samplers", default=None,
                        help="comma-separated parts of sampler names to run, e.g. 'euler,dpmpp_2m' (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    return parser


def run(args: argparse.Namespace, command: str, log=print) -> Dict[str, Any]:
    """Run the benchmark and write the reports (torch's thread count is restored afterwards)."""
    with torch_threads(args.threads):
        return _run(args, command, log)


def _run(args: argparse.Namespace, command: str, log) -> Dict[str, Any]:
    start = time.perf_counter()
    quick = bool(args.quick)
    budgets = QUICK_BUDGETS if quick else FULL_BUDGETS
    n2 = positive_int(args.n2 if args.n2 is not None else (2000 if quick else 20_000), "--n2")
    n16 = positive_int(args.n16 if args.n16 is not None else (1000 if quick else 16_000), "--n16")
    sizes = {"entropy_samples": 40_000 if quick else ENTROPY_SAMPLES,
             "energy_samples": min(ENERGY_SAMPLES, n2, n16, 1000 if quick else ENERGY_SAMPLES)}
    only = [w.strip() for w in args.samplers.split(",") if w.strip()] if getattr(args, "samplers", None) else None
    if only and not families(quick, only):
        raise ValueError(f"--samplers {args.samplers!r} matches none of {[f.sampler for f in families(quick)]}")
    if not peers.k_diffusion_available():
        log("note: k-diffusion is not installed; its samplers are left out (pip install --no-deps k-diffusion==0.1.1.post1 tqdm)")
    report: Dict[str, Any] = {"problems": {}}
    for name, target in default_targets(seed=args.seed, **sizes).items():
        n = n2 if target.dim == 2 else n16
        res = run_target(target, budgets, n, args.seed, quick, log, floor_repeats=4 if quick else FLOOR_REPEATS, only=only)
        report["problems"][name] = dict(res, description=target.description, n=n, dim=target.dim, budgets=list(budgets),
                                        entropy=target.entropy._asdict(), reference=target.reference._asdict(),
                                        denoise_shift=target.reference.value - target.entropy.value, sde=repr(target.sde),
                                        ays_calibration={steps: info for steps, (_, info) in sorted(target.ays.items())})
    kd_version = None
    if peers.k_diffusion_available():
        from importlib.metadata import PackageNotFoundError, version

        try:
            kd_version = version("k-diffusion")
        except PackageNotFoundError:
            kd_version = "?"
    report["meta"] = {"command": command, "machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "k_diffusion": kd_version, "quick": quick, "seed": args.seed, "seconds": time.perf_counter() - start,
                      **sizes}
    out = Path(args.out)
    write_text(out / "stochastic.json", json.dumps(jsonable(report), indent=1, default=str) + "\n")
    write_text(out / "stochastic.md", markdown_report(report))
    plot(report, out / "stochastic.png")
    log(f"wrote {out / 'stochastic.md'}, {out / 'stochastic.json'}, {out / 'stochastic.png'} ({report['meta']['seconds']:.0f}s)")
    return report


build_parser, main = entry_points(add_arguments, run, __doc__, "sde-diffusion bench stochastic")


if __name__ == "__main__":
    sys.exit(main())
