"""Shared ground truth for the sampler tests (imported by test_samplers_gmm, test_convergence, test_peers).

* ``reference_gmm()``: a 2-D, three-component, anisotropic Gaussian mixture. Its
  ``score_model(sde)`` is the exact score of the noised data, so samplers are tested without training.
* ``noise_floor()``: the *measured* null distribution of the MMD statistic between two independent
  data sets of the sample size the tests use; the acceptance threshold is a small factor times the
  largest null value, so a sampler passes only if its samples are as close to fresh data as fresh
  data is to itself (and the negative controls show the threshold can fail). Measured with the
  default seed: null median −1e−4, std 1.1e−3, max 3.4e−3, so the threshold 8.5e−3 sits ~7.7 null
  standard deviations above the median; a 0.3 shift of the means gives 2.8e−2–3.1e−2.
* ``logp_z()``: a second, complementary statistic. MMD with small kernels is weak against a wrong
  component *width*; the mean log-likelihood of the samples under the true mixture is not
  (a 20 % covariance error moves it by ~5 standard errors at n = 1000).

Everything is cached per process, so the null is simulated once per test session.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

from sde_diffusion.data import GaussianMixture
from sde_diffusion.metrics import mmd

#: samples per MMD comparison (both sides)
N_SAMPLES = 1000
#: RBF bandwidths at the scale of the components (std 0.3–0.6): lighter-tailed null, more power
#: against shifted or mis-shaped components than the default median heuristic
BANDWIDTHS = (0.15, 0.3, 0.6)
#: independent data-vs-data replicates that define the noise floor
NULL_REPS = 30
#: threshold = FLOOR_FACTOR × max(null replicates)
FLOOR_FACTOR = 2.5
#: |z| bound for the mean log-likelihood of n samples under the true GMM
LOGP_Z_MAX = 5.0




def reference_gmm() -> GaussianMixture:
    """Three well-separated anisotropic components with unequal weights (D = 2)."""
    means = [[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]]
    covs = [[[0.30, 0.10], [0.10, 0.20]], [[0.15, -0.05], [-0.05, 0.25]], [[0.40, 0.00], [0.00, 0.10]]]
    return GaussianMixture(means, covs, [0.3, 0.4, 0.3])


def shifted_gmm(shift: float = 0.3) -> GaussianMixture:
    """The negative control: the reference mixture with every mean moved by ``shift`` along x."""
    ref = reference_gmm()
    return GaussianMixture(ref.means + torch.tensor([shift, 0.0], dtype=torch.float64), ref.covs, ref.weights)


def mmd_stat(x: Tensor, y: Tensor) -> float:
    """Unbiased squared MMD (sde_diffusion.metrics.mmd) with the fixed test bandwidths."""
    return mmd(x, y, bandwidths=BANDWIDTHS)


@dataclass(frozen=True)
class NoiseFloor:
    values: Tuple[float, ...]  #: MMD between independent data sets of N_SAMPLES points each
    threshold: float  #: FLOOR_FACTOR × max(values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def median(self) -> float:
        return float(torch.tensor(self.values).median())

    @property
    def std(self) -> float:
        return float(torch.tensor(self.values).std())

    def describe(self) -> str:
        return (f"MMD noise floor over {len(self.values)} data-vs-data replicates of n={N_SAMPLES}: "
                f"median {self.median:.2e}, std {self.std:.2e}, max {self.max:.2e}; threshold {self.threshold:.2e}")


@functools.lru_cache(maxsize=None)
def noise_floor(seed: int = 20240) -> NoiseFloor:
    gmm = reference_gmm()
    g = torch.Generator().manual_seed(seed)
    values = tuple(mmd_stat(gmm.sample(N_SAMPLES, g, torch.float64), gmm.sample(N_SAMPLES, g, torch.float64))
                   for _ in range(NULL_REPS))
    return NoiseFloor(values, FLOOR_FACTOR * max(values))


@functools.lru_cache(maxsize=None)
def logp_reference(seed: int = 777, n: int = 200_000) -> Tuple[float, float]:
    """Mean and standard deviation of log p(x) for x ~ GMM (a large Monte Carlo reference)."""
    gmm = reference_gmm()
    lp = gmm.log_prob(gmm.sample(n, torch.Generator().manual_seed(seed), torch.float64))
    return float(lp.mean()), float(lp.std())


def logp_z(x: Tensor) -> float:
    """z-score of the samples' mean log-likelihood under the true GMM against its exact expectation."""
    mean, std = logp_reference()
    gmm = reference_gmm()
    return (float(gmm.log_prob(x.double()).mean()) - mean) / (std / math.sqrt(x.shape[0]))
