r"""Data specs, one string per dataset::

    load_data("mnist:/data/mnist", split="train", limit=1000)
    load_data("cifar10:/data/cifar-10-batches-py", split="test")
    load_data("folder:/data/pets", split="test")  # DIR/train/<class>/*.jpg, DIR/val/<class>/...
    load_data("gaussian")                # N(0, 1) images of shape 3×32×32, random labels
    load_data("gaussian:1x28x28")

An unknown dataset name is a ValueError suggesting the closest one and listing the forms.
"""

from __future__ import annotations

import numbers
import re

from torch.utils.data import Dataset

from .._checks import ArgumentTypeError, unknown
from .datasets import MAX_CHANNELS, MAX_SAMPLE_BYTES, MAX_SIDE, GaussianNoise, ImageDataset
from .folder import ImageFolder
from .readers import CIFAR, SPLITS, STATS, _split, read_cifar, read_mnist

DATASETS = ("gaussian", "mnist", "fashion-mnist", "cifar10", "cifar100", "folder")
SPEC_FORMS = (
    "gaussian, gaussian:CxHxW, mnist:DIR, fashion-mnist:DIR, cifar10:DIR, cifar100:DIR, folder:DIR"
)
GAUSSIAN_SIZES = {"train": 50_000, "test": 10_000}


def load_data(spec: str, split: str = "train", limit: int | None = None) -> Dataset:
    """The dataset of a spec: ``gaussian``, ``gaussian:CxHxW``, ``mnist:DIR``,
    ``fashion-mnist:DIR``, ``cifar10:DIR``, ``cifar100:DIR``, ``folder:DIR``; ``split``
    "train" or "test"; ``limit`` keeps the first samples (of a folder: ``limit`` samples spread
    evenly over its sorted classes). The Gaussian source has 50 000 train / 10 000 test samples
    (different seeds) of shape 3×32×32 unless given. A folder serves its evaluation view at
    224×224 (see :class:`~normlab.data.ImageFolder`)."""
    _split(split)
    _check_limit(limit)
    name, argument = parse_spec(spec)
    if name == "gaussian":
        size = GAUSSIAN_SIZES[split] if limit is None else min(limit, GAUSSIAN_SIZES[split])
        return GaussianNoise(size, _shape(argument, spec), seed=SPLITS.index(split))
    if not argument:
        raise ValueError(
            f"data spec {spec!r}: {name} needs its directory, as '{name}:DIR' (DIR holding "
            + _holding(name)
        )
    if name == "folder":
        return ImageFolder(argument, split, limit=limit)
    if "mnist" in name:
        arrays = read_mnist(argument, split, dataset=name)
    else:
        arrays = read_cifar(argument, name, split)
    mean, std = STATS[name]
    return ImageDataset(arrays, mean, std, name).limited(limit)


def parse_spec(spec: str) -> tuple[str, str]:
    """The dataset name (lower case, checked) and the argument after the colon ("" if none)."""
    if not isinstance(spec, str):
        raise TypeError(f"a data spec must be a string ({SPEC_FORMS}), got {type(spec).__name__}")
    name, _, argument = spec.strip().partition(":")
    name = name.lower()
    if name not in DATASETS:
        raise ValueError(f"{unknown('dataset', name, DATASETS)}. Spec forms: {SPEC_FORMS}")
    return name, argument


def _check_limit(limit: int | None) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral):
        raise ArgumentTypeError(
            f"limit must be a positive integer or None, got {limit!r} ({type(limit).__name__})"
        )
    if limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")


def _holding(name: str) -> str:
    if name == "folder":
        return "train/ and val/ class folders)"
    return "the IDX files)" if "mnist" in name else f"{CIFAR[name]['folder']}/)"


def _shape(argument: str, spec: str) -> tuple[int, int, int]:
    """The C×H×W of ``gaussian:CxHxW``: three positive dims, C ≤ 1024 and H, W ≤ 4096, and a
    float32 sample of at most 1 GiB. Anything else raises a ValueError with the valid form:
    an image model needs (C, H, W) samples (two dims would give (N, C, H) batches, which its
    convolutions misread or refuse), and a mistyped size (an extra digit) would build samples
    that exhaust memory at the first batch instead of failing here."""
    if not argument:
        return (3, 32, 32)
    form = (
        f"the gaussian shape must be CxHxW, three positive dims joined by 'x' with "
        f"C <= {MAX_CHANNELS} and H, W <= {MAX_SIDE}, e.g. 'gaussian:3x32x32'"
    )
    if not re.fullmatch(r"\d+(x\d+)*", argument):
        raise ValueError(f"data spec {spec!r}: {form}, got {argument!r}")
    dims = tuple(int(d) for d in argument.split("x"))
    if len(dims) != 3:
        raise ValueError(
            f"data spec {spec!r}: {form}, got {argument!r} ({len(dims)} dim"
            f"{'s' if len(dims) != 1 else ''})"
        )
    if 0 in dims:
        raise ValueError(f"data spec {spec!r}: {form} (positive dims), got {argument!r}")
    channels, height, width = dims
    if channels > MAX_CHANNELS or max(height, width) > MAX_SIDE:
        raise ValueError(f"data spec {spec!r}: {form}, got {argument!r} (too large)")
    size = channels * height * width * 4
    if size > MAX_SAMPLE_BYTES:
        raise ValueError(
            f"data spec {spec!r}: {argument!r} gives float32 samples of {size / 2**30:.1f} GiB "
            f"each; the limit is {MAX_SAMPLE_BYTES / 2**30:.0f} GiB per sample (C·H·W <= "
            f"{MAX_SAMPLE_BYTES // 4:,} values)"
        )
    return dims
