"""Peer samplers driven by the same exact denoiser: k-diffusion's ``sampling`` module and score_sde's ODE sampler.

k-diffusion (Crowson; Karras et al. 2022) works in σ̃ = σ_t/α_t on x̃ = x/α_t with a denoiser
D(x̃, σ̃) ≈ E[x_0 | x̃]. For a linear SDE with log-SNR λ = log(α/σ) = −log σ̃ that denoiser is

    D(x̃, σ̃) = x̂_0(α(t) x̃, t),   t = t(λ = −log σ̃),

and sampling starts from x̃_T = x_T/α_T for the *same* x_T our samplers get. k-diffusion's package
``__init__`` imports torchvision and more; its ``sampling`` module needs only torch, scipy, torchdiffeq,
torchsde, tqdm and ``utils.append_dims``, so :func:`load_k_diffusion_sampling` executes just that file
under a stub package. When k-diffusion is not installed it returns None and the peers are reported as
unavailable (``pip install --no-deps k-diffusion==0.1.1.post1 tqdm``).

score_sde's ODE sampler setting (Song et al. 2021, ``sampling.get_ode_sampler``) is scipy's
``solve_ivp(method="RK45", rtol=atol=1e-5)`` on the flattened probability-flow ODE from T to eps, the
drift evaluated by the (float32) model; here it ends with the Tweedie denoise at eps like every sampler.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import types
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..model import ScoreModel
from .problems import scipy_pf_ode

_KDIFF_CACHE: Dict[str, Optional[types.ModuleType]] = {}


def _append_dims(x: Tensor, target_dims: int) -> Tensor:
    """k_diffusion.utils.append_dims: append singleton dimensions to x until it has target_dims dims."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def load_k_diffusion_sampling() -> Optional[types.ModuleType]:
    """``k_diffusion.sampling`` loaded without running ``k_diffusion/__init__.py``; None if not installed.

    If a real ``k_diffusion`` package is already imported, its ``sampling`` module is used as is.
    """
    if "module" in _KDIFF_CACHE:
        return _KDIFF_CACHE["module"]
    module = None
    existing = sys.modules.get("k_diffusion")
    if existing is not None and hasattr(existing, "sampling") and not getattr(existing, "_sde_diffusion_stub", False):
        module = existing.sampling
    else:
        try:
            spec = importlib.util.find_spec("k_diffusion")
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        path = next((f"{loc}/sampling.py" for loc in locations if os.path.exists(f"{loc}/sampling.py")), None)
        if path is not None:
            module = _exec_sampling(path, locations)
    _KDIFF_CACHE["module"] = module
    return module


def _exec_sampling(path: str, locations) -> Optional[types.ModuleType]:
    package = sys.modules.get("k_diffusion")
    if package is None:
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(locations)  # a package, but __init__.py is never executed
        package._sde_diffusion_stub = True
        sys.modules["k_diffusion"] = package
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims
    sys.modules.setdefault("k_diffusion.utils", utils)
    package.utils = sys.modules["k_diffusion.utils"]
    spec = importlib.util.spec_from_file_location("k_diffusion.sampling", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["k_diffusion.sampling"] = module
    try:
        spec.loader.exec_module(module)
    except ImportError:  # a dependency of sampling.py (tqdm, torchsde, ...) is missing
        sys.modules.pop("k_diffusion.sampling", None)
        return None
    package.sampling = module
    return module


class KarrasDenoiser:
    """D(x̃, σ̃) = x̂_0(α(t) x̃, t) with t = t(λ = −log σ̃): a :class:`ScoreModel` as a k-diffusion denoiser.

    ``calls`` counts evaluations (one per batched call), like our samplers' ``nfe``.
    """

    def __init__(self, model: ScoreModel):
        self.model, self.sde, self.calls = model, model.sde, 0

    def sigma_tilde(self, t: float) -> float:
        """σ̃(t) = σ_t/α_t = e^{−λ(t)}."""
        return math.exp(-float(self.sde._log_snr(torch.tensor(float(t), dtype=torch.float64))))

    def time_of(self, sigma_tilde: Tensor) -> Tensor:
        """t(σ̃) in float64, clamped into [0, T]."""
        lam = -torch.as_tensor(sigma_tilde, dtype=torch.float64).cpu().log()
        return self.sde._t_of_log_snr(lam).clamp(0.0, self.sde.T)

    def __call__(self, x: Tensor, sigma: Tensor, **model_kwargs) -> Tensor:
        self.calls += 1
        sigma = torch.as_tensor(sigma).reshape(-1)
        if sigma.numel() > 1 and bool((sigma == sigma[0]).all()):
            sigma = sigma[:1]  # one time for the whole batch, as k-diffusion always passes
        t64 = self.time_of(sigma)
        t64 = t64[0] if t64.numel() == 1 else t64
        alpha = self.sde._log_alpha(t64).exp()
        alpha_x = alpha.to(x.dtype) if alpha.dim() == 0 else alpha.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return self.model._predict(alpha_x * x, t64, model_kwargs).x0


@contextlib.contextmanager
def seeded_global_rng(seed: Optional[int]):
    """k-diffusion draws from torch's global RNG (randn_like, BrownianTree seeds): seed it, then restore it."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def run_k_diffusion(sampler: str, model: ScoreModel, x_T: Tensor, sigmas: Optional[Tensor] = None,
                    seed: Optional[int] = 0, **kwargs) -> Tuple[Tensor, int]:
    """Run ``k_diffusion.sampling.sample_<sampler>`` from the same x_T; returns (x̂_0, NFE).

    Samplers on a sigma list get ``sigmas`` (decreasing, ending with 0: the last step is the denoise).
    ``dpm_fast`` (``n`` = its NFE) and ``dpm_adaptive`` run from σ̃(T) to σ̃(eps) and end there, so the
    Tweedie denoise at σ̃(eps) is added (and counted) here.
    """
    kd = load_k_diffusion_sampling()
    if kd is None:
        raise RuntimeError("k-diffusion is not installed: pip install --no-deps k-diffusion==0.1.1.post1 tqdm")
    sde = model.sde
    denoiser = KarrasDenoiser(model)
    alpha_T = float(sde._log_alpha(torch.tensor(sde.T, dtype=torch.float64)).exp())
    x = x_T / alpha_T
    fn = getattr(kd, f"sample_{sampler}")
    with seeded_global_rng(seed), warnings.catch_warnings():
        # torchsde's Brownian tree warns when float32 σ̃ ends round a hair outside its float64 interval
        warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
        if sampler in ("dpm_fast", "dpm_adaptive"):
            s_min, s_max = denoiser.sigma_tilde(sde.eps), denoiser.sigma_tilde(sde.T)
            out = fn(denoiser, x, s_min, s_max, disable=True, **kwargs)
            if isinstance(out, tuple):
                out = out[0]
            out = denoiser(out, torch.full((x.shape[0],), s_min, dtype=x.dtype))
        else:
            if sigmas is None:
                raise ValueError(f"sample_{sampler} needs sigmas")
            out = fn(denoiser, x, sigmas.to(x.dtype), disable=True, **kwargs)
    return out, denoiser.calls


def k_diffusion_sigmas(schedule: str, steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """``steps + 1`` decreasing σ̃ from σ̃_max to σ̃_min, then 0 (k-diffusion's own schedule functions)."""
    kd = load_k_diffusion_sampling()
    if schedule == "karras":
        return kd.get_sigmas_karras(steps + 1, sigma_min, sigma_max, rho=rho)
    if schedule == "exponential":
        return kd.get_sigmas_exponential(steps + 1, sigma_min, sigma_max)
    raise ValueError(f"schedule must be 'karras' or 'exponential', got {schedule!r}")


def run_score_sde_ode(model: ScoreModel, x_T: Tensor, rtol: float = 1e-5, atol: float = 1e-5,
                      method: str = "RK45") -> Tuple[Tensor, int]:
    """score_sde's ODE sampler: scipy ``solve_ivp`` on the flattened PF-ODE from T to eps (state in float64,
    drift by the model in x_T's dtype), then the Tweedie denoise at eps. Returns (x̂_0, NFE: every drift
    evaluation plus the denoise)."""
    x0, drift_calls = scipy_pf_ode(model, x_T, rtol, atol, method, dtype=x_T.dtype)
    return x0, drift_calls + 1


def k_diffusion_available() -> bool:
    return load_k_diffusion_sampling() is not None


__all__ = [
    "load_k_diffusion_sampling", "k_diffusion_available", "KarrasDenoiser", "run_k_diffusion",
    "k_diffusion_sigmas", "run_score_sde_ode", "seeded_global_rng",
]
