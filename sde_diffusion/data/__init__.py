"""Data: exact-score Gaussian mixtures, 2-D toy distributions and image training sets."""
from .gmm import GaussianMixture, eight_gaussians
from .toy import TOY_DATASETS, checkerboard, moons, swiss_roll, toy_sample
from .dataset import DATASET_NAMES, Dataset, load
from .images import digits, from_array, from_unit, image_folder, mnist, to_unit

__all__ = ["GaussianMixture", "eight_gaussians", "TOY_DATASETS", "toy_sample", "moons", "swiss_roll", "checkerboard",
           "Dataset", "load", "DATASET_NAMES", "digits", "mnist", "from_array", "image_folder", "to_unit", "from_unit"]
