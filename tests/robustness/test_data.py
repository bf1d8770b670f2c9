"""Data at its edges: specs, GaussianNoise, TrainBatches, the augmentations and corrupt IDX files;
the gaussian spec's grammar driven by hypothesis; MNIST from ../shared/data when it is there."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normlab._checks import ArgumentTypeError
from normlab.data import (
    GaussianNoise,
    TrainBatches,
    crop_flip_params,
    load_data,
    random_crop_flip,
    read_idx,
    read_mnist,
    resize_center_crop,
    resized_crop_box,
)

from .probes import check, ids

DATA = Path(__file__).parents[2] / ".." / "shared" / "data"


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [(3, TypeError, "a data spec must be a string"),
     (None, TypeError, "a data spec must be a string"),
     (b"gaussian", TypeError, "got bytes"),
     ("", ValueError, "unknown dataset ''"),
     ("imagenet:/x", ValueError, "unknown dataset 'imagenet'; valid choices: gaussian, mnist"),
     ("mnsit:/x", ValueError, "Did you mean 'mnist'?"),
     ("mnist", ValueError, "mnist needs its directory, as 'mnist:DIR'"),
     ("cifar10:", ValueError, "cifar10 needs its directory"),
     ("mnist:/nonexistent/normlab", (ValueError, OSError), "/nonexistent/normlab"),
     ("cifar100:/nonexistent/normlab", (ValueError, OSError), "/nonexistent/normlab"),
     ("folder:/nonexistent/normlab", (ValueError, OSError), "/nonexistent/normlab"),
     ("gaussian:3x8", ValueError, "the gaussian shape must be CxHxW")],
    ids=ids,
)  # fmt: skip
def test_bad_specs_name_the_spec_and_the_forms(spec, error, words):
    check(lambda: load_data(spec), error, words)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [({"split": "validation"}, ValueError, "unknown split 'validation'"),
     ({"split": None}, ValueError, "unknown split None"),
     ({"limit": 0}, ValueError, "limit must be a positive integer or None, got 0"),
     ({"limit": -5}, ValueError, "got -5"),
     ({"limit": 1.5}, ArgumentTypeError, "limit must be a positive integer or None, got 1.5"),
     ({"limit": "10"}, ArgumentTypeError, "got '10'"),
     ({"limit": True}, ArgumentTypeError, "got True")],
    ids=ids,
)  # fmt: skip
def test_bad_split_and_limit(kwargs, error, words):
    check(lambda: load_data("gaussian", **kwargs), error, words)


def test_limit_edges_and_numpy_integers():
    assert len(load_data("gaussian", limit=1)) == 1
    assert len(load_data("gaussian", "test", limit=np.int64(10**9))) == 10_000


# -- GaussianNoise ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [({"num_samples": 0}, ValueError, "GaussianNoise num_samples must be a positive integer"),
     ({"num_samples": -1}, ValueError, "got -1"),
     ({"num_samples": 2.5}, ArgumentTypeError, "num_samples must be a positive integer, got 2.5"),
     ({"num_samples": "3"}, ArgumentTypeError, "got '3' (a str)"),
     ({"num_samples": None}, ArgumentTypeError, "num_samples"),
     ({"num_classes": 0}, ValueError, "num_classes must be an integer in [1, 1000000]"),
     ({"num_classes": 10**7}, ValueError, "got 10000000"),
     ({"num_classes": 1.5}, ArgumentTypeError, "num_classes"),
     ({"seed": -1}, ValueError, "GaussianNoise seed must be an integer in [0, "),
     ({"seed": 2**41}, ValueError, "seed"),
     ({"seed": 1.5}, ArgumentTypeError, "seed must be an integer in"),
     ({"seed": "0"}, ArgumentTypeError, "seed"),
     ({"shape": ()}, TypeError, "GaussianNoise shape must be a non-empty sequence"),
     ({"shape": "3x8x8"}, TypeError, "e.g. (3, 32, 32), got '3x8x8'"),
     ({"shape": None}, TypeError, "GaussianNoise shape"),
     ({"shape": (3, 0, 8)}, ValueError, "GaussianNoise shape[1] must be a positive integer, got 0"),
     ({"shape": (3, -1)}, ValueError, "shape[1] must be a positive integer, got -1"),
     ({"shape": (3, 2.5)}, ArgumentTypeError, "shape[1] must be a positive integer, got 2.5"),
     ({"shape": (64, 4096, 4096)}, ValueError, "4.0 GiB each; the limit is 1 GiB per sample")],
    ids=ids,
)  # fmt: skip
def test_gaussian_noise_arguments(kwargs, error, words):
    """num_samples=2.5 used to build a dataset whose len() failed; a huge shape allocated
    gigabytes per sample; a float seed failed at the first sample."""
    arguments = {"num_samples": 4} | kwargs
    check(lambda: GaussianNoise(**arguments), error, words)


@pytest.mark.parametrize(
    ("index", "error", "words"),
    [(4, IndexError, "index 4 out of range for 4 samples"),
     (-1, IndexError, "index -1 out of range"),
     (1.5, TypeError, "GaussianNoise indices are integers, got 1.5"),
     ("0", TypeError, "got '0' (str)")],
    ids=ids,
)  # fmt: skip
def test_gaussian_noise_indices(index, error, words):
    data = GaussianNoise(4, (1, 2, 2))
    check(lambda: data[index], error, words)


def test_gaussian_noise_samples_are_reproducible_and_in_range():
    data = GaussianNoise(6, (2, 3, 3), num_classes=3, seed=5)
    x, y = data[np.int64(2)]
    again, label = GaussianNoise(6, (2, 3, 3), num_classes=3, seed=5)[torch.tensor(2)]
    assert torch.equal(x, again)
    assert y == label
    assert x.shape == (2, 3, 3)
    assert 0 <= y < 3
    assert not torch.equal(x, data[3][0])


# -- TrainBatches ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [({"batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
     ({"batch_size": 2.0}, ArgumentTypeError, "batch_size must be a positive integer, got 2.0"),
     ({"batch_size": 100}, ValueError, "fewer than batch_size 100"),
     ({"seed": 1.5}, ArgumentTypeError, "seed must be an integer, got 1.5"),
     ({"seed": "a"}, ArgumentTypeError, "seed must be an integer, got 'a'"),
     ({"train": "no"}, ArgumentTypeError, "train must be True or False, got 'no'"),
     ({"device": "meta"}, ValueError, "device 'meta' is not available here"),
     ({"device": "gpu"}, ValueError, "unknown device 'gpu'"),
     ({"device": 3}, ArgumentTypeError, "device must be a device name"),
     ({"image_size": 0}, ValueError, "image_size must be an integer in [1, 4096], got 0"),
     ({"world_size": 0}, ValueError, "world_size must be a positive integer, got 0"),
     ({"rank": 2, "world_size": 2}, ValueError, "rank must be in [0, 1] for world_size 2"),
     ({"workers": -1}, ValueError, "workers must be a non-negative integer, got -1"),
     ({"split": "dev"}, ValueError, "unknown split 'dev'")],
    ids=ids,
)  # fmt: skip
def test_train_batches_arguments(kwargs, error, words):
    arguments = {"split": "train", "batch_size": 4, "train": True, "limit": 8} | kwargs
    split = arguments.pop("split")
    batch = arguments.pop("batch_size")
    check(lambda: TrainBatches("gaussian:1x4x4", split, batch, **arguments), error, words)


def test_train_batches_cover_the_limit_once_per_epoch():
    batches = TrainBatches("gaussian:1x4x4", "test", 3, train=False, limit=8)
    sizes = [x.shape[0] for x, _ in batches.epoch(0)]
    assert sum(sizes) == 8
    assert max(sizes) == 3


# -- augmentations ---------------------------------------------------------------------------

G = torch.Generator().manual_seed(0)
IMAGE = None


def _image():
    from PIL import Image

    return Image.new("RGB", (40, 30))


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [(lambda: crop_flip_params(4, -1, generator=G), ValueError, "padding must be an integer in [0, 1024], got -1"),
     (lambda: crop_flip_params(4, 2.5, generator=G), ArgumentTypeError, "padding must be an integer"),
     (lambda: crop_flip_params(4, "4", generator=G), ArgumentTypeError, "got '4'"),
     (lambda: crop_flip_params(4, 10**6, generator=G), ValueError, "got 1000000"),
     (lambda: crop_flip_params(4, 1, generator=G, flip_p=math.nan), ValueError, "flip_p (a probability)"),
     (lambda: crop_flip_params(4, 1, generator=G, flip_p="0.5"), ArgumentTypeError, "flip_p"),
     (lambda: crop_flip_params(-1, 1, generator=G), ValueError, "n must be a non-negative integer"),
     (lambda: random_crop_flip([[0]], generator=G), TypeError, "random_crop_flip expects a tensor batch"),
     (lambda: random_crop_flip(torch.zeros(2, 1, 4, 4), generator=G, flip="no"), ArgumentTypeError, "flip must be True or False"),
     (lambda: resized_crop_box(0, 10, generator=G), ValueError, "width must be a positive integer, got 0"),
     (lambda: resized_crop_box(10, 10, generator=G, scale=(0.5, 0.1)), ValueError, "need 0 < scale[0] <= scale[1]"),
     (lambda: resized_crop_box(10, 10, generator=G, scale=(math.nan, 1)), ValueError, "(finite)"),
     (lambda: resized_crop_box(10, 10, generator=G, scale=("a", 1)), ArgumentTypeError, "scale must be a sequence of numbers"),
     (lambda: resized_crop_box(10, 10, generator=G, ratio=(1.0,)), ValueError, "(low, high) pairs"),
     (lambda: resize_center_crop(_image(), 0), ValueError, "size must be an integer in [1, 4096], got 0"),
     (lambda: resize_center_crop(_image(), 16, crop_ratio=0), ValueError, "crop_ratio must be a finite number in (0, 1]"),
     (lambda: resize_center_crop(_image(), 16, crop_ratio=math.nan), ValueError, "got nan")],
    ids=[f"augment-{i}" for i in range(17)],
)  # fmt: skip
def test_augmentation_arguments(call, error, words):
    check(call, error, words)


def test_random_crop_flip_keeps_shape_dtype_and_values():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    out = random_crop_flip(x, 0, generator=torch.Generator().manual_seed(1), flip=False)
    assert torch.equal(out, x)
    padded = random_crop_flip(x, 2, generator=torch.Generator().manual_seed(1))
    assert padded.shape == x.shape
    assert padded.dtype == x.dtype
    assert set(padded.unique().tolist()) <= set(x.unique().tolist()) | {0}


# -- corrupt files ---------------------------------------------------------------------------


def _idx(dims: tuple[int, ...], data: bytes, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + data


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"", "too short for an IDX file's magic number"),
     (b"\x01\x02\x03\x04rest", "bad IDX magic number 0x01020304"),
     (_idx((2, 2), b"\x00" * 3), "announces dims (2, 2) (4 bytes of data), but the file holds 3"),
     (_idx((2, 2), b"\x00" * 5), "the file holds 5 bytes"),
     (bytes([0, 0, 8, 3, 0, 0]), "truncated IDX header"),
     (_idx((2,), b"\x00\x00", code=0x42), "bad IDX magic number")],
    ids=ids,
)  # fmt: skip
def test_corrupt_idx_files_say_what_is_wrong(tmp_path, content, words):
    path = tmp_path / "file-idx"
    path.write_bytes(content)
    check(lambda: read_idx(path), ValueError, (str(path), words))


def test_a_corrupt_gzip_file_names_itself(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx((1, 2, 2), b"\x00" * 4))[:-9])
    check(lambda: read_idx(path), (ValueError, OSError), str(path))


def test_an_idx_round_trip_is_exact(tmp_path):
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "ok-idx"
    path.write_bytes(_idx(values.shape, values.tobytes()))
    assert np.array_equal(read_idx(path, ndim=3), values)
    check(lambda: read_idx(path, ndim=1), ValueError, "announces 3 dims; expected 1")


@settings(max_examples=40, deadline=None)
@given(st.from_regex(r"[0-9x]{0,12}", fullmatch=True))
def test_any_gaussian_shape_text_parses_exactly_or_gives_the_form(text):
    parts = text.split("x")
    valid = (
        len(parts) == 3
        and all(p.isdigit() for p in parts)
        and all(int(p) > 0 for p in parts)
        and int(parts[0]) <= 1024
        and max(int(parts[1]), int(parts[2])) <= 4096
        and math.prod(int(p) for p in parts) * 4 <= 1 << 30
    )
    if text == "" or valid:
        data = load_data(f"gaussian:{text}" if text else "gaussian", limit=1)
        assert data.input_shape == (tuple(int(p) for p in parts) if text else (3, 32, 32))
    else:
        check(lambda: load_data(f"gaussian:{text}"), ValueError, f"data spec 'gaussian:{text}'")


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="no MNIST in ../shared/data")
def test_real_mnist_reads_and_refuses_a_bad_split():
    arrays = read_mnist(DATA / "mnist", "test")
    assert arrays.images.shape[1:] == (1, 28, 28)
    assert int(arrays.labels.min()) >= 0
    assert int(arrays.labels.max()) <= 9
    data = load_data(f"mnist:{DATA / 'mnist'}", "test", limit=5)
    x, y = data[4]
    assert x.shape == (1, 28, 28)
    assert bool(torch.isfinite(x).all())
    assert 0 <= y <= 9
    check(lambda: load_data(f"mnist:{DATA / 'mnist'}", "valid"), ValueError, "unknown split")
