"""Data: exact-score Gaussian mixtures and 2-D toy distributions."""
from .gmm import GaussianMixture, eight_gaussians
from .toy import TOY_DATASETS, checkerboard, moons, swiss_roll, toy_sample

__all__ = ["GaussianMixture", "eight_gaussians", "TOY_DATASETS", "toy_sample", "moons", "swiss_roll", "checkerboard"]
