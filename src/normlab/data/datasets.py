"""Datasets over the readers' arrays: :class:`ImageDataset` (uint8 images served normalized per
channel) and :class:`GaussianNoise` (white noise generated per index, nothing held in memory)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .readers import ImageArrays


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
        if num_samples < 1 or num_classes < 1 or not shape or min(shape) < 1:
            raise ValueError(
                f"GaussianNoise needs positive num_samples, num_classes and dims, got "
                f"num_samples={num_samples}, shape={tuple(shape)}, num_classes={num_classes}"
            )
        self.num_samples, self.shape, self.seed = num_samples, tuple(shape), seed
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
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = torch.randn(self.shape, generator=generator)
        return image, int(torch.randint(self.num_classes, (), generator=generator))
