"""Data specs and readers refuse what would build wrong data: a gaussian shape that is not
C×H×W, absurd sizes, CIFAR labels that are not integers."""

from __future__ import annotations

import numpy as np
import pytest

from normlab.data import load_data
from normlab.data.readers import read_cifar
from tests.test_data import cifar10_dir, write_pickle

FORM = "the gaussian shape must be CxHxW, three positive dims joined by 'x'"


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ("3x32", "(2 dims)"),
        ("32", "(1 dim)"),
        ("1x3x32x32", "(4 dims)"),
        ("0x32x32", "positive dims"),
        ("3x0x2", "positive dims"),
        ("3x-1x2", "got '3x-1x2'"),
        ("3x32x", "got '3x32x'"),
        ("3*32*32", "got '3*32*32'"),
        ("3x32.5x32", "got '3x32.5x32'"),
        ("3x4097x32", "(too large)"),
        ("3x32x100000", "(too large)"),
        ("1025x8x8", "(too large)"),
        ("64x4096x4096", "4.0 GiB each; the limit is 1 GiB per sample"),
    ],
)
def test_bad_gaussian_shapes_give_the_valid_form(shape, words):
    with pytest.raises(ValueError) as info:  # noqa: PT011 (the words are checked below)
        load_data(f"gaussian:{shape}")
    message = str(info.value)
    assert words in message
    assert f"data spec 'gaussian:{shape}'" in message
    if "GiB" not in words:
        assert FORM in message
        assert "C <= 1024 and H, W <= 4096, e.g. 'gaussian:3x32x32'" in message


@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (1024, 1, 1), (3, 4096, 4096), (16, 4096, 4096), (1, 28, 28)]
)
def test_gaussian_shape_edges(shape):
    data = load_data("gaussian:" + "x".join(map(str, shape)), limit=2)
    assert data.input_shape == shape
    if np.prod(shape) < 10_000:
        assert data[1][0].shape == shape


@pytest.mark.parametrize(
    ("labels", "dtype"),
    [
        ([0.5, 1.0, 2.0], "float64"),
        ([0.0, 1.0, 2.0], "float64"),  # whole numbers in floats: still not class indices
        (np.array([0, 1, 2], dtype=np.float32), "float32"),
        (["0", "1", "2"], "<U1"),
        ([True, False, True], "bool"),
    ],
)
def test_cifar_labels_must_be_integers(tmp_path, labels, dtype):
    folder = cifar10_dir(tmp_path)
    data = np.zeros((3, 3072), np.uint8)
    write_pickle(folder / "test_batch", {b"data": data, b"labels": labels})
    with pytest.raises(ValueError, match="must hold integer class indices") as info:
        read_cifar(folder, "cifar10", "test")
    message = str(info.value)
    assert str(folder / "test_batch") in message
    assert f"labels of dtype {dtype}" in message
    assert "b'labels'" in message


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_cifar_integer_labels_of_any_width_load(tmp_path, dtype):
    folder = cifar10_dir(tmp_path)
    labels = np.array([9, 0, 4], dtype=dtype)
    write_pickle(folder / "test_batch", {b"data": np.zeros((3, 3072), np.uint8), b"labels": labels})
    assert read_cifar(folder, "cifar10", "test").labels.tolist() == [9, 0, 4]
