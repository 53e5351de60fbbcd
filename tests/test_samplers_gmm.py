"""Every reverse-time sampler, driven by the exact score of a Gaussian mixture, lands on the mixture.

The score of noised GMM data is known in closed form (``GaussianMixture.score_model(sde)``), so
the only errors left are the sampler's own: discretisation and bugs. Two statistics, both with a
measured or exact null (see ``_sampler_reference``):

* MMD between n = 1000 samples and n = 1000 fresh data points must stay below 2.5 × the largest MMD
  seen between 30 pairs of independent data sets of the same size (the noise floor);
* the mean log-likelihood of the samples under the true GMM must be within 5 standard errors of its
  exact expectation (catches wrong component widths, to which small-kernel MMD is blind).

Negative controls show both can fail: data from a mixture with shifted means, samples from a
sampler driven by the wrong mixture's score, and components 1.5× too wide.

Step counts are "moderate": large enough that the discretisation bias is well below the floor
(measured over 5 seeds per case: fast cases stay ≤ 0.4 × threshold except single draws ≤ 0.76), small enough for the time budget.
"""
from __future__ import annotations

import zlib

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion.data import GaussianMixture

from _sampler_reference import (
    FLOOR_FACTOR,
    LOGP_Z_MAX,
    N_SAMPLES,
    logp_z,
    mmd_stat,
    noise_floor,
    reference_gmm,
    shifted_gmm,
)


def _vp_beta(t):
    return 0.1 + 19.9 * t


SDES = {
    "vp": lambda: sd.VPSDE(),
    "ve": lambda: sd.VESDE(sigma_min=0.01, sigma_max=50.0),
    "subvp": lambda: sd.SubVPSDE(),
    "cosine": lambda: sd.CosineVPSDE(),
    # the VP SDE again, but through the generic numerically-integrated path
    "from_coefficients": lambda: sd.LinearSDE.from_coefficients(f=lambda t: -0.5 * _vp_beta(t), g=lambda t: _vp_beta(t) ** 0.5),
    "ddpm": lambda: sd.DiscreteVPSDE.linear(),
}

slow = pytest.mark.slow


def case(sde_name, make, id, marks=()):
    return pytest.param(sde_name, make, id=f"{id}-{sde_name}", marks=marks)


CASES = [
    # --- Euler–Maruyama and the reverse-diffusion predictor
    case("vp", lambda: S.EulerMaruyama(steps=200), "euler_maruyama"),
    case("ve", lambda: S.EulerMaruyama(steps=200), "euler_maruyama"),
    case("vp", lambda: S.ReverseDiffusion(steps=400), "reverse_diffusion"),
    case("ve", lambda: S.ReverseDiffusion(steps=400), "reverse_diffusion"),
    # --- predictor–corrector
    case("vp", lambda: S.PredictorCorrector("reverse_diffusion", "langevin", steps=200), "pc_rd_langevin"),
    case("ve", lambda: S.PredictorCorrector("reverse_diffusion", "langevin", steps=200), "pc_rd_langevin"),
    case("vp", lambda: S.PredictorCorrector("euler_maruyama", "none", steps=200), "pc_em_none"),
    case("ve", lambda: S.PredictorCorrector("euler_maruyama", "none", steps=200), "pc_em_none", slow),
    case("vp", lambda: S.PredictorCorrector("ancestral", "langevin", corrector_steps=2, steps=100), "pc_ancestral_langevin2"),
    case("ve", lambda: S.PredictorCorrector("ancestral", "langevin", corrector_steps=2, steps=100), "pc_ancestral_langevin2", slow),
    # --- probability-flow ODE (torchdiffeq)
    case("vp", lambda: S.ProbabilityFlowODE(method="dopri5"), "ode_dopri5"),
    case("ve", lambda: S.ProbabilityFlowODE(method="dopri5"), "ode_dopri5"),
    case("vp", lambda: S.ProbabilityFlowODE(method="rk4", steps=25), "ode_rk4"),
    case("ve", lambda: S.ProbabilityFlowODE(method="rk4", steps=25), "ode_rk4"),
    # --- torchsde adapter
    case("vp", lambda: S.TorchSDE("euler", steps=200), "torchsde_euler"),
    case("vp", lambda: S.TorchSDE("srk", steps=50), "torchsde_srk"),
    case("vp", lambda: S.TorchSDE("heun", steps=100), "torchsde_heun"),
    case("ve", lambda: S.TorchSDE("euler", steps=200), "torchsde_euler", slow),
    case("ve", lambda: S.TorchSDE("srk", steps=50), "torchsde_srk", slow),
    case("ve", lambda: S.TorchSDE("heun", steps=100), "torchsde_heun", slow),
    # --- DDPM: native on the discrete schedule (1000 steps), and on continuous SDEs
    case("ddpm", lambda: S.DDPM(), "ddpm_native"),
    case("vp", lambda: S.DDPM(steps=400), "ddpm"),
    case("ve", lambda: S.DDPM(steps=400), "ddpm"),
    # --- DDIM
    case("vp", lambda: S.DDIM(steps=100, eta=0.0), "ddim_eta0"),
    case("ve", lambda: S.DDIM(steps=100, eta=0.0), "ddim_eta0"),
    case("vp", lambda: S.DDIM(steps=200, eta=1.0), "ddim_eta1"),
    case("ve", lambda: S.DDIM(steps=200, eta=1.0), "ddim_eta1", slow),
    # --- the other SDEs
    case("subvp", lambda: S.EulerMaruyama(steps=200), "euler_maruyama"),
    case("subvp", lambda: S.ProbabilityFlowODE(method="dopri5"), "ode_dopri5", slow),
    case("cosine", lambda: S.DDIM(steps=100), "ddim_eta0"),
    case("cosine", lambda: S.EulerMaruyama(steps=200), "euler_maruyama", slow),
    case("from_coefficients", lambda: S.ProbabilityFlowODE(method="dopri5"), "ode_dopri5"),
    case("from_coefficients", lambda: S.EulerMaruyama(steps=200), "euler_maruyama", slow),
    case("ddpm", lambda: S.DDIM(steps=100), "ddim_eta0"),
    case("ddpm", lambda: S.EulerMaruyama(steps=200), "euler_maruyama", slow),
]


@pytest.fixture(scope="module")
def floor():
    return noise_floor()


def _seed(request) -> int:
    """A fixed seed per test case (stable across runs and orderings)."""
    return zlib.crc32(request.node.name.encode())


def _fresh_data(generator: torch.Generator) -> torch.Tensor:
    return reference_gmm().sample(N_SAMPLES, generator, torch.float64)


@pytest.mark.parametrize("sde_name,make", CASES)
def test_sampler_lands_on_gmm(sde_name, make, floor, request):
    gmm = reference_gmm()
    sde = SDES[sde_name]()
    g = torch.Generator().manual_seed(_seed(request))
    sampler = make()
    out = sampler.sample(gmm.score_model(sde), shape=(N_SAMPLES, 2), generator=g, dtype=torch.float64)
    assert out.x.shape == (N_SAMPLES, 2) and out.x.dtype == torch.float64
    assert torch.isfinite(out.x).all()

    stat = mmd_stat(out.x, _fresh_data(g))
    assert stat < floor.threshold, f"{sampler!r} on {sde_name}: MMD {stat:.3e} above the noise floor. {floor.describe()}"
    z = logp_z(out.x)
    assert abs(z) < LOGP_Z_MAX, f"{sampler!r} on {sde_name}: mean log-likelihood off by {z:+.2f} standard errors"


# ----------------------------------------------------------------------------- negative controls


def test_noise_floor_is_a_real_threshold(floor):
    """The floor is measured, positive, and of the size the unbiased statistic has at n = 1000."""
    assert 0 < floor.max < 0.02
    assert abs(floor.median) < 3 * floor.std  # unbiased: centred near 0
    assert floor.threshold == pytest.approx(FLOOR_FACTOR * floor.max)
    assert floor.threshold > floor.median + 5 * floor.std  # far in the tail of the null: a robust acceptance bound


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shifted_data_exceeds_threshold(floor, seed):
    """Data from the mixture with every mean moved by 0.3 (about one component std) is rejected."""
    g = torch.Generator().manual_seed(seed)
    wrong = shifted_gmm(0.3).sample(N_SAMPLES, g, torch.float64)
    stat = mmd_stat(wrong, _fresh_data(g))
    assert stat > floor.threshold, f"shifted mixture not detected: MMD {stat:.3e}. {floor.describe()}"


def test_sampler_with_wrong_score_exceeds_threshold(floor):
    """The whole pipeline can fail: EM driven by the shifted mixture's exact score is rejected."""
    g = torch.Generator().manual_seed(4)
    model = shifted_gmm(0.3).score_model(sd.VPSDE())
    out = S.EulerMaruyama(steps=200).sample(model, shape=(N_SAMPLES, 2), generator=g, dtype=torch.float64)
    stat = mmd_stat(out.x, _fresh_data(g))
    assert stat > floor.threshold, f"sampler on the wrong score not detected: MMD {stat:.3e}. {floor.describe()}"


def test_wrong_component_width_fails_loglik_check():
    """Components 1.5× too wide (small-kernel MMD is weak here): the log-likelihood check rejects them."""
    ref = reference_gmm()
    wide = GaussianMixture(ref.means, ref.covs * 1.5, ref.weights)
    for seed in (5, 6, 7):
        z = logp_z(wide.sample(N_SAMPLES, torch.Generator().manual_seed(seed), torch.float64))
        assert z < -LOGP_Z_MAX, f"too-wide components not detected (z = {z:+.2f})"


def test_fresh_data_passes_loglik_check():
    for seed in (8, 9, 10):
        z = logp_z(reference_gmm().sample(N_SAMPLES, torch.Generator().manual_seed(seed), torch.float64))
        assert abs(z) < LOGP_Z_MAX
