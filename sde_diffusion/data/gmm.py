"""Gaussian mixtures: data whose noised marginals, and so whose score, are known exactly.

Under any linear SDE, x_t = α x_0 + σ ε maps a mixture Σ w_k N(μ_k, Σ_k) to
Σ w_k N(α μ_k, α² Σ_k + σ² I): a GMM stays a GMM, so

    ∇ log p_t(x) = −Σ_k r_k(x) (α² Σ_k + σ² I)⁻¹ (x − α μ_k),   r_k = posterior responsibility.

That exact score drives every sampler test and benchmark without training a network.
With a class label per component (``labels``) the class-conditional pieces are exact too: p(x | y) is the
sub-mixture of class y's components, and the noisy classifier is Bayes' rule over the noised components,

    log p(y = c | x_t) = logsumexp_{k: label_k = c} log w_k N_k,t(x) − logsumexp_k log w_k N_k,t(x),

which is what classifier-free and classifier guidance (Ho & Salimans 2022; Dhariwal & Nichol 2021) need as ground truth.
For a single Gaussian the probability-flow ODE is linear and solvable in closed form (:meth:`flow`).
Given some coordinates, the rest are again a mixture in closed form (:meth:`condition`): the exact posterior
that inpainting / imputation methods are measured against.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .._checks import check_batch, check_finite
from ..model import ScoreModel
from ..sde import LinearSDE, randn

ArrayLike = Union[Tensor, Sequence]


class GaussianMixture:
    """Σ_k w_k N(means[k], covs[k]) in D dimensions (computations in float64).

    ``covs`` may be full (K, D, D), diagonal (K, D), or one variance per component (K,).
    ``labels`` (optional, K integers in 0…C−1, every class used) gives each component a class; the class
    prior is then π_c = Σ_{k: label_k = c} w_k and ``null_label`` = C stands for "no class".
    """

    def __init__(self, means: ArrayLike, covs: ArrayLike, weights: Optional[ArrayLike] = None,
                 labels: Optional[ArrayLike] = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape == (k,):
            covs = covs[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif covs.shape == (k, d):
            covs = torch.diag_embed(covs)
        elif covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape (K,), (K, D) or (K, D, D) with K={k}, D={d}; got {tuple(covs.shape)}")
        if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-12):
            raise ValueError("covs must be symmetric")
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or (weights <= 0).any():
            raise ValueError(f"weights must be {k} positive numbers, got {weights}")
        for name, value in (("means", means), ("covs", covs), ("weights", weights)):
            check_finite(value, name)
        eigvals, eigvecs = torch.linalg.eigh(covs)
        if (eigvals <= 0).any():
            raise ValueError(f"covs must be positive definite; smallest eigenvalue {float(eigvals.min()):.3g}")
        self.means, self.covs = means, covs
        self.weights = weights / weights.sum()
        self.eigvals, self.eigvecs = eigvals, eigvecs
        self.dim = d
        self.labels = None if labels is None else _checked_labels(labels, k)

    # ----- data -----
    def sample(self, n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """n draws from the mixture, shape (n, D)."""
        if int(n) != n or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n}")
        comp = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        z = randn((int(n), self.dim), generator, dtype=torch.float64)
        x = self.means[comp] + torch.einsum("nde,ne->nd", self.eigvecs[comp], self.eigvals[comp].sqrt() * z)
        return x.to(dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) of the data (t = 0), shape (batch,)."""
        return self._log_components(x.reshape(x.shape[0], -1).double(), torch.ones(1, dtype=torch.float64),
                                    torch.zeros(1, dtype=torch.float64))[0].logsumexp(1).to(x.dtype)

    # ----- the noised marginal p_t under an SDE -----
    def _log_components(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        """Per-component log w_k N(x; α μ_k, α² Σ_k + σ² I) and the whitened residuals, float64."""
        alpha, sigma = alpha.reshape(-1, 1, 1), sigma.reshape(-1, 1, 1)
        var = alpha**2 * self.eigvals + sigma**2  # (B|1, K, D)
        z = torch.einsum("bkd,kde->bke", x[:, None, :] - alpha * self.means, self.eigvecs)
        log_n = -0.5 * (z**2 / var).sum(-1) - 0.5 * var.log().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return log_n + self.weights.log(), z, var

    def marginal_log_prob(self, x: Tensor, t, sde: LinearSDE) -> Tensor:
        """log p_t(x) of the noised data under ``sde``."""
        t64 = sde._time(t)
        alpha, sigma = sde._log_alpha(t64).exp(), sde._log_sigma(t64).exp()
        log_c, _, _ = self._log_components(x.reshape(x.shape[0], -1).double(), alpha.cpu(), sigma.cpu())
        return log_c.logsumexp(1).to(x.dtype)

    def score(self, x: Tensor, t, sde: LinearSDE) -> Tensor:
        """Exact ∇_x log p_t(x) under ``sde``; t is a scalar or (batch,)."""
        t64 = sde._time(t)
        return self._score(x, t64, sde)

    def _score(self, x: Tensor, t64: Tensor, sde: LinearSDE) -> Tensor:
        alpha = sde._log_alpha(t64).exp().cpu()
        sigma = sde._log_sigma(t64).exp().cpu()
        flat = x.reshape(x.shape[0], -1).double().cpu()
        log_c, z, var = self._log_components(flat, alpha, sigma)
        resp = torch.softmax(log_c, dim=1)  # (B, K)
        score = -torch.einsum("bk,kde,bke->bd", resp, self.eigvecs, z / var)
        return score.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def score_model(self, sde: LinearSDE) -> ScoreModel:
        """A :class:`ScoreModel` whose score is exactly ∇ log p_t under ``sde`` (the ground truth)."""
        # the sampler hands continuous t in [0, T]; re-validating it every call would only cost time
        return ScoreModel.from_score_fn(lambda x, t: self._score(x, t.double().cpu(), sde), sde)

    # ----- closed-form probability flow (one Gaussian) -----
    def flow(self, x: Tensor, t_from, t_to, sde: LinearSDE) -> Tensor:
        """Exact probability-flow ODE map x(t_from) ↦ x(t_to) for a single-Gaussian mixture.

        Along each eigen-direction of Σ the solution is x_t = α_t μ + √(α_t² λ + σ_t²) z with z constant.
        """
        if self.means.shape[0] != 1:
            raise ValueError("flow is only closed-form for a single Gaussian (K = 1)")
        t0, t1 = sde._time(t_from, "t_from"), sde._time(t_to, "t_to")
        a0, s0 = sde._log_alpha(t0).exp(), sde._log_sigma(t0).exp()
        a1, s1 = sde._log_alpha(t1).exp(), sde._log_sigma(t1).exp()
        mu, lam, u = self.means[0], self.eigvals[0], self.eigvecs[0]
        flat = x.reshape(x.shape[0], -1).double().cpu()
        z = ((flat - a0 * mu) @ u) / torch.sqrt(a0**2 * lam + s0**2)
        out = a1 * mu + (z * torch.sqrt(a1**2 * lam + s1**2)) @ u.T
        return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    # ----- classes: exact conditionals p(x | y) and the exact noisy classifier p(y | x_t) -----
    @property
    def num_classes(self) -> int:
        """C, the number of classes (``labels`` must be set)."""
        return int(self._labels().max()) + 1

    @property
    def null_label(self) -> int:
        """The label (= C) that :meth:`conditional_score_model` reads as "unconditional"."""
        return self.num_classes

    @property
    def class_weights(self) -> Tensor:
        """The class prior π_c = Σ_{k: label_k = c} w_k, shape (C,)."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self._labels(), self.weights)

    def conditional(self, y: int) -> "GaussianMixture":
        """p(x | y): the sub-mixture of class ``y``'s components, weights renormalised."""
        labels = self._labels()
        if isinstance(y, bool) or int(y) != y or not 0 <= y < self.num_classes:
            raise ValueError(f"y must be a class in 0…{self.num_classes - 1}, got {y}")
        keep = labels == int(y)
        return GaussianMixture(self.means[keep], self.covs[keep], self.weights[keep])

    def class_log_prob(self, x: Tensor, t, sde: LinearSDE) -> Tensor:
        """Exact log p(y = c | x_t) under ``sde``, shape (B, C); differentiable in x (float64 inside).

        Rows are normalised log-probabilities, so they also serve as a classifier's logits.
        """
        t64 = sde._time(t)
        check_batch(t64, x)
        log_c, _, _ = self._log_components(x.reshape(x.shape[0], -1).double().cpu(),
                                           sde._log_alpha(t64).exp().cpu(), sde._log_sigma(t64).exp().cpu())
        per_class = log_c[:, None, :].masked_fill(~self._class_mask()[None], -math.inf).logsumexp(-1)
        return (per_class - log_c.logsumexp(1, keepdim=True)).to(device=x.device, dtype=x.dtype)

    def conditional_score(self, x: Tensor, t, sde: LinearSDE, y: Tensor) -> Tensor:
        """Exact ∇_x log p_t(x | y) per sample; rows with y = ``null_label`` get the unconditional ∇ log p_t(x)."""
        return self._conditional_score(x, sde._time(t), sde, y)

    def conditional_score_model(self, sde: LinearSDE) -> ScoreModel:
        """A :class:`ScoreModel` (prediction "score") whose net reads ``y`` from its kwargs.

        ``model.score(x, t, y=y)`` is exactly ∇ log p_t(x | y), and ∇ log p_t(x) where y == ``null_label``:
        the kind of jointly trained conditional/unconditional model classifier-free guidance wraps.
        """
        self._labels()
        return ScoreModel.from_score_fn(lambda x, t, y=None: self._conditional_score(x, t.double().cpu(), sde, y), sde)

    def _conditional_score(self, x: Tensor, t64: Tensor, sde: LinearSDE, y: Optional[Tensor]) -> Tensor:
        y = self._checked_y(y, x)
        alpha = sde._log_alpha(t64).exp().cpu()
        sigma = sde._log_sigma(t64).exp().cpu()
        flat = x.reshape(x.shape[0], -1).double().cpu()
        log_c, z, var = self._log_components(flat, alpha, sigma)
        in_class = (self._labels()[None, :] == y[:, None]) | (y == self.null_label)[:, None]  # (B, K)
        resp = torch.softmax(log_c.masked_fill(~in_class, -math.inf), dim=1)
        score = -torch.einsum("bk,kde,bke->bd", resp, self.eigvecs, z / var)
        return score.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def _checked_y(self, y: Optional[Tensor], x: Tensor) -> Tensor:
        if y is None:
            raise ValueError('the conditional score needs labels: pass model_kwargs["y"] (int64 tensor of shape (batch,))')
        if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f'model_kwargs["y"] must be an integer tensor of shape (batch,), got {y!r}')
        if y.shape != (x.shape[0],):
            raise ValueError(f'model_kwargs["y"] must have shape ({x.shape[0]},), got {tuple(y.shape)}')
        y = y.cpu()
        if (y < 0).any() or (y > self.null_label).any():
            raise ValueError(f'model_kwargs["y"] must lie in 0…{self.null_label} (null_label = {self.null_label}), '
                             f"got values in {int(y.min())}…{int(y.max())}")
        return y

    def _labels(self) -> Tensor:
        if self.labels is None:
            raise ValueError("this GaussianMixture has no classes: build it with labels=[class of each component]")
        return self.labels

    def _class_mask(self) -> Tensor:
        """(C, K): mask[c, k] = component k belongs to class c."""
        return self._labels()[None, :] == torch.arange(self.num_classes)[:, None]

    # ----- exact posterior of missing coordinates (inpainting / imputation ground truth) -----
    def condition(self, observed_idx: Sequence[int], values: ArrayLike, noise_var: float = 0.0) -> "GaussianMixture":
        """p(x_m | x_o = values): the mixture over the missing coordinates m given the observed ones o.

        With y = x_o + N(0, noise_var I) (noise_var = 0: exact observation), component k gives, by the
        Schur complement of S_k = Σ_k,oo + noise_var I (Bishop 2006, §2.3.1),

            μ_k,m|o = μ_k,m + Σ_k,mo S_k⁻¹ (y − μ_k,o),   Σ_k,m|o = Σ_k,mm − Σ_k,mo S_k⁻¹ Σ_k,om,

        and Bayes' rule reweights the components by how well each explains y:
        w_k' ∝ w_k N(y; μ_k,o, S_k). The missing coordinates keep their order; ``values`` is one vector
        of len(observed_idx) numbers (condition per sample in a loop for many observations).
        """
        idx = torch.as_tensor(observed_idx)
        if idx.dim() != 1 or idx.is_floating_point() or idx.dtype == torch.bool or idx.numel() == 0:
            raise ValueError(f"observed_idx must be a non-empty 1-d sequence of integer coordinates, got {observed_idx!r}")
        idx = idx.to(torch.int64)
        if (idx < 0).any() or (idx >= self.dim).any() or torch.unique(idx).numel() != idx.numel():
            raise ValueError(f"observed_idx must be distinct coordinates in 0…{self.dim - 1}, got {idx.tolist()}")
        if idx.numel() == self.dim:
            raise ValueError("observed_idx covers every coordinate: nothing is left to condition on")
        y = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        if y.numel() != idx.numel():
            raise ValueError(f"values must hold {idx.numel()} numbers (one per observed coordinate), got {y.numel()}")
        check_finite(y, "values")
        noise_var = float(noise_var)
        if not noise_var >= 0 or not math.isfinite(noise_var):
            raise ValueError(f"noise_var must be a non-negative finite number, got {noise_var}")
        keep = torch.ones(self.dim, dtype=torch.bool)
        keep[idx] = False
        miss = keep.nonzero().reshape(-1)
        c = self.covs
        s_oo = c[:, idx][:, :, idx] + noise_var * torch.eye(idx.numel(), dtype=torch.float64)
        c_mo, c_mm = c[:, miss][:, :, idx], c[:, miss][:, :, miss]
        gain = torch.linalg.solve(s_oo, c_mo.transpose(1, 2)).transpose(1, 2)  # Σ_mo S⁻¹, (K, m, o)
        resid = y - self.means[:, idx]  # (K, o)
        means = self.means[:, miss] + torch.einsum("kmo,ko->km", gain, resid)
        covs = c_mm - gain @ c_mo.transpose(1, 2)
        covs = 0.5 * (covs + covs.transpose(1, 2))
        chol = torch.linalg.cholesky(s_oo)
        white = torch.linalg.solve_triangular(chol, resid[:, :, None], upper=False)[:, :, 0]
        log_n = (-0.5 * white.pow(2).sum(1) - torch.diagonal(chol, dim1=1, dim2=2).log().sum(1)
                 - 0.5 * idx.numel() * math.log(2 * math.pi))
        weights = torch.softmax(self.weights.log() + log_n, dim=0).clamp_min(torch.finfo(torch.float64).tiny)
        return GaussianMixture(means, covs, weights)

    def __repr__(self) -> str:
        classes = "" if self.labels is None else f", C={self.num_classes}"
        return f"GaussianMixture(K={self.means.shape[0]}, D={self.dim}{classes})"


def _checked_labels(labels: ArrayLike, k: int) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integers (one class per component), got dtype {labels.dtype}")
    labels = labels.to(torch.int64)
    if labels.shape != (k,):
        raise ValueError(f"labels must have shape ({k},), one class per component; got {tuple(labels.shape)}")
    if (labels < 0).any():
        raise ValueError(f"labels must be non-negative class indices, got {labels.tolist()}")
    used = torch.unique(labels)
    if used.numel() != int(labels.max()) + 1:
        raise ValueError(f"labels must use every class 0…{int(labels.max())} at least once, got {labels.tolist()}")
    return labels


def eight_gaussians(radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """Eight isotropic Gaussians on a circle (the classic 2-D toy), as an exact-score mixture."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture(means, torch.full((8,), std**2, dtype=torch.float64))
