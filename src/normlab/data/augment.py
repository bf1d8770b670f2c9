r"""Augmentations, each drawing its randomness from an explicit :class:`torch.Generator` (never
the global RNG), so that a batch is a pure function of the generator's seed.

* In-memory batches (N, C, H, W), vectorized over the batch: :func:`random_crop_flip`, the
  CIFAR recipe of He et al. 2016 (§4.2): pad every side with ``padding`` zeros, take an H×W
  window at a uniform offset (dy, dx) ∈ {0, …, 2·padding}², and mirror it horizontally with
  probability 1/2::

      out[n, c, i, j] = pad(x)[n, c, dy_n + i, dx_n + j]              (kept)
      out[n, c, i, j] = pad(x)[n, c, dy_n + i, dx_n + W − 1 − j]      (flipped)

* Images of a folder, one at a time (in DataLoader workers), with Pillow:
  :func:`random_resized_crop_flip`, the Inception-style crop (Szegedy et al. 2015) as
  torchvision's ``RandomResizedCrop`` defines it — a box of area s·H·W and aspect ratio r, with
  s ~ U(scale) and log r ~ U(log ratio), at a uniform position, resized to size×size — then a
  mirror with probability 1/2; and for evaluation :func:`resize_center_crop` (shorter side to
  size / crop_ratio, e.g. 256 for 224, then the central size×size window).

* :func:`normalize`: ((x / 255) − mean) / std per channel, on the batch tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .._checks import check_bool, check_int, check_number, check_reals

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
MAX_PADDING = 1024
MAX_IMAGE_SIDE = 4096  # as data specs' gaussian:CxHxW
CROP_RATIO = 0.875  # eval: resize the shorter side to size / 0.875 (256 for 224), crop the centre


class CropFlip(NamedTuple):
    """Per-sample offsets (N,) into the padded image and the flip decisions (N,) bool."""

    dy: Tensor
    dx: Tensor
    flipped: Tensor


def crop_flip_params(
    n: int, padding: int, *, generator: torch.Generator, flip_p: float = 0.5
) -> CropFlip:
    """Draw offsets dy, dx uniform in {0, …, 2·padding} and flips with probability ``flip_p``,
    in this order, from ``generator`` (a CPU generator)."""
    n = check_int("n", n, 0)
    padding = check_int("padding", padding, 0, MAX_PADDING)
    flip_p = check_number("flip_p (a probability)", flip_p, 0.0, 1.0)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flipped = torch.rand(n, generator=generator) < flip_p
    return CropFlip(dy, dx, flipped)


def crop_flip(x: Tensor, padding: int, params: CropFlip) -> Tensor:
    """The windows of ``params`` of the zero-padded batch ``x`` (N, C, H, W), mirrored where
    flipped, for the whole batch at once: the padded batch's (2p+1)² windows are a strided view
    (unfold, no copy), one advanced index takes sample n's window (dy_n, dx_n), and one
    ``where`` mirrors the flipped ones. No loop over samples, no host synchronisation."""
    if not isinstance(x, Tensor):
        raise TypeError(f"crop_flip expects a tensor batch (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"crop_flip expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    padding = check_int("padding", padding, 0, MAX_PADDING)
    N, _, H, W = x.shape
    dy, dx, flipped = (t.to(x.device) for t in params)
    if dy.shape != (N,) or dx.shape != (N,) or flipped.shape != (N,):
        raise ValueError(
            f"crop_flip: offsets and flips of shapes {tuple(dy.shape)}, {tuple(dx.shape)}, "
            f"{tuple(flipped.shape)} for a batch of {N}"
        )
    padded = F.pad(x, (padding, padding, padding, padding))
    windows = padded.unfold(2, H, 1).unfold(3, W, 1)  # (N, C, 2p+1, 2p+1, H, W), a view
    crops = windows.permute(0, 2, 3, 1, 4, 5)[torch.arange(N, device=x.device), dy, dx]
    return torch.where(flipped[:, None, None, None], crops.flip(-1), crops)


def random_crop_flip(
    x: Tensor, padding: int = 4, *, generator: torch.Generator, flip: bool = True
) -> Tensor:
    """Random crop with ``padding`` and (if ``flip``) a horizontal flip with p = 1/2 of every
    sample of the batch ``x`` (N, C, H, W), uint8 or float; same dtype and shape out."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"random_crop_flip expects a tensor batch (N, C, H, W), got {type(x).__name__}"
        )
    flip = check_bool("flip", flip)
    params = crop_flip_params(x.shape[0], padding, generator=generator, flip_p=0.5 * flip)
    return crop_flip(x, padding, params)


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """((x / 255) − mean) / std for a uint8 batch (N, C, H, W); mean and std of shape (C, 1, 1),
    in the operation order of :class:`~normlab.data.ImageDataset` (bitwise the same values)."""
    return x.float().div_(255.0).sub_(mean).div_(std)


# -- folder images (Pillow, one sample at a time) --------------------------------------------


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(high: int, generator: torch.Generator) -> int:
    """A uniform integer in [0, high)."""
    return int(torch.randint(0, high, (), generator=generator))


def resized_crop_box(
    width: int,
    height: int,
    *,
    generator: torch.Generator,
    scale: Sequence[float] = SCALE,
    ratio: Sequence[float] = RATIO,
) -> tuple[int, int, int, int]:
    """The (top, left, h, w) box of a random resized crop of a width×height image.

    Up to 10 draws of an area fraction s ~ U(scale) and an aspect ratio r = w/h with
    log r ~ U(log ratio[0], log ratio[1]) give w = round(√(s·A·r)), h = round(√(s·A/r)); the
    first box that fits is placed at a uniform (top, left). If none fits, the box is the central
    crop of the whole image clamped to the ratio range.
    """
    width = check_int("width", width, 1)
    height = check_int("height", height, 1)
    scale, ratio = check_reals("scale", scale), check_reals("ratio", ratio)
    if len(scale) != 2 or len(ratio) != 2:
        raise ValueError(
            f"scale and ratio must be (low, high) pairs, got scale={tuple(scale)}, "
            f"ratio={tuple(ratio)}"
        )
    if not all(math.isfinite(v) for v in (*scale, *ratio)) or not (
        0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]
    ):
        raise ValueError(
            f"need 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1] (finite), got "
            f"scale={tuple(scale)}, ratio={tuple(ratio)}"
        )
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_low, log_high, generator))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return _randint(height - h + 1, generator), _randint(width - w + 1, generator), h, w
    return _central_box(width, height, ratio)


def _central_box(width: int, height: int, ratio: Sequence[float]) -> tuple[int, int, int, int]:
    aspect = width / height
    if aspect < ratio[0]:  # too tall: keep the width
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:  # too wide: keep the height
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop_flip(
    image: Image.Image,
    size: int,
    *,
    generator: torch.Generator,
    scale: Sequence[float] = SCALE,
    ratio: Sequence[float] = RATIO,
    flip: bool = True,
) -> Image.Image:
    """The box of :func:`resized_crop_box` resized (bilinear) to size×size, then mirrored with
    probability 1/2 (drawn after the box, from the same generator)."""
    size = check_int("size", size, 1, MAX_IMAGE_SIDE)
    top, left, h, w = resized_crop_box(
        image.width, image.height, generator=generator, scale=scale, ratio=ratio
    )
    out = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if flip and float(torch.rand((), generator=generator)) < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def resize_center_crop(
    image: Image.Image, size: int, crop_ratio: float = CROP_RATIO
) -> Image.Image:
    """Evaluation transform: the shorter side resized (bilinear) to round(size / crop_ratio),
    the longer one in proportion (truncated), then the central size×size window, its top-left
    corner at round((side − size) / 2)."""
    size = check_int("size", size, 1, MAX_IMAGE_SIDE)
    crop_ratio = check_number("crop_ratio", crop_ratio, 0.0, 1.0, low_open=True)
    short = round(size / crop_ratio)
    width, height = image.width, image.height
    if width <= height:
        new = (short, int(short * height / width))
    else:
        new = (int(short * width / height), short)
    if new != (width, height):
        image = image.resize(new, Image.Resampling.BILINEAR)
    top = round((new[1] - size) / 2)
    left = round((new[0] - size) / 2)
    return image.crop((left, top, left + size, top + size))


def to_uint8_tensor(image: Image.Image) -> Tensor:
    """A Pillow RGB (or L) image as a uint8 tensor (C, H, W)."""
    array = np.array(image, dtype=np.uint8, copy=True)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
