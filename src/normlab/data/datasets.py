"""Datasets over the readers' arrays: :class:`ImageDataset` (uint8 images served normalized per
channel) and :class:`GaussianNoise` (white noise generated per index, nothing held in memory)."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_int
from .readers import ImageArrays

MAX_CHANNELS = 1024
MAX_SIDE = 4096
MAX_SAMPLE_BYTES = 1 << 30
MAX_CLASSES = 1_000_000
MAX_SEED = 1 << 40  # seed · 1 000 003 + index stays a 63-bit generator seed


def check_sample_shape(name: str, shape: object) -> tuple[int, ...]:
    """A sample's shape: a non-empty sequence of positive integers whose float32 sample takes at
    most 1 GiB (:data:`MAX_SAMPLE_BYTES`), so that a mistyped size (an extra digit) fails here
    rather than exhausting memory at the first batch."""
    if isinstance(shape, str | bytes) or not isinstance(shape, Sequence) or not shape:
        raise TypeError(
            f"{name} must be a non-empty sequence of positive integers, e.g. (3, 32, 32), got "
            f"{shape!r}"
        )
    dims = tuple(check_int(f"{name}[{i}]", d, 1) for i, d in enumerate(shape))
    values = math.prod(dims)
    if values * 4 > MAX_SAMPLE_BYTES:
        raise ValueError(
            f"{name} {dims} gives float32 samples of {values * 4 / 2**30:.1f} GiB each; the limit "
            f"is {MAX_SAMPLE_BYTES / 2**30:.0f} GiB per sample ({MAX_SAMPLE_BYTES // 4:,} values)"
        )
    return dims


class ImageDataset(Dataset):
    """uint8 images served as ((x / 255) − mean) / std float32 tensors, with int labels."""

    def __init__(
        self,
        arrays: ImageArrays,
        mean: Sequence[float],
        std: Sequence[float],
        name: str = "images",
    ) -> None:
        images = arrays.images
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"ImageDataset needs uint8 images (N, C, H, W), got {images.dtype} of shape "
                f"{tuple(images.shape)}"
            )
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(
                f"ImageDataset: {images.shape[1]} channels need as many means and stds, got "
                f"{len(mean)} and {len(std)}"
            )
        self.images, self.labels, self.classes, self.name = (
            images,
            arrays.labels,
            arrays.classes,
            name,
        )
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index].float().div_(255.0).sub_(self.mean).div_(self.std)
        return image, int(self.labels[index])

    def limited(self, limit: int | None) -> ImageDataset:
        """The first ``limit`` samples (all of them for None)."""
        if limit is None:
            return self
        arrays = ImageArrays(self.images[:limit], self.labels[:limit], self.classes)
        return ImageDataset(
            arrays, self.mean.flatten().tolist(), self.std.flatten().tolist(), self.name
        )


class GaussianNoise(Dataset):
    """White noise: sample i is N(0, 1) of ``shape`` with a uniform label in
    [0, num_classes), both drawn from a generator seeded by (seed, i): reproducible, and
    nothing is held in memory."""

    def __init__(
        self,
        num_samples: int,
        shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        seed: int = 0,
    ) -> None:
        num_samples = check_int("GaussianNoise num_samples", num_samples, 1)
        num_classes = check_int("GaussianNoise num_classes", num_classes, 1, MAX_CLASSES)
        seed = check_int("GaussianNoise seed", seed, 0, MAX_SEED)
        shape = check_sample_shape("GaussianNoise shape", shape)
        self.num_samples, self.shape, self.seed = num_samples, shape, seed
        self.classes = tuple(str(i) for i in range(num_classes))
        self.name = "gaussian"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.shape

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(
                f"GaussianNoise indices are integers, got {index!r} ({type(index).__name__})"
            ) from None
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = torch.randn(self.shape, generator=generator)
        return image, int(torch.randint(self.num_classes, (), generator=generator))
