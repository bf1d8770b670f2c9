"""Augmentations against their definitions: the batch crop equals pad-then-slice at the drawn
offsets, flips are exact mirrors, a seed fixes the batch, the offsets and flips are uniform, and
the folder transforms follow the random-resized-crop and resize-centre-crop rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from normlab.data import (
    ImageDataset,
    crop_flip,
    crop_flip_params,
    normalize,
    random_crop_flip,
    random_resized_crop_flip,
    resize_center_crop,
    resized_crop_box,
)
from normlab.data.augment import to_uint8_tensor
from normlab.data.readers import ImageArrays


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 16, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=generator(seed), dtype=torch.uint8)


def reference_crop_flip(x, padding, params):
    """One sample at a time: zero-pad, slice the window at (dy, dx), mirror if flipped."""
    H, W = x.shape[-2:]
    out = []
    for k in range(x.shape[0]):
        padded = F.pad(x[k], (padding,) * 4)
        dy, dx = int(params.dy[k]), int(params.dx[k])
        window = padded[:, dy : dy + H, dx : dx + W]
        out.append(window.flip(-1) if params.flipped[k] else window)
    return torch.stack(out)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 9),
    c=st.integers(1, 3),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    padding=st.integers(0, 5),
    seed=st.integers(0, 2**31),
)
def test_crop_flip_is_pad_then_slice_at_the_drawn_offsets(n, c, h, w, padding, seed):
    x = batch(n, c, h, w, seed)
    params = crop_flip_params(n, padding, generator=generator(seed))
    assert torch.equal(crop_flip(x, padding, params), reference_crop_flip(x, padding, params))
    out = random_crop_flip(x, padding, generator=generator(seed))
    assert torch.equal(out, crop_flip(x, padding, params))  # the same draws, in the same order
    assert out.dtype == torch.uint8


def test_offsets_zero_and_no_flip_is_identity_and_flip_is_the_mirror():
    x = batch(5).float()
    zero = torch.full((5,), 4)
    keep = crop_flip(x, 4, (zero, zero, torch.zeros(5, dtype=torch.bool)))
    assert torch.equal(keep, x)
    mirror = crop_flip(x, 4, (zero, zero, torch.ones(5, dtype=torch.bool)))
    assert torch.equal(mirror, x.flip(-1))
    # offset (0, 0) starts in the zero padding: 4 zero rows and columns, then x shifted by 4
    origin = torch.zeros(5, dtype=torch.long)
    corner = crop_flip(x, 4, (origin, origin, origin.bool()))
    assert not corner[..., :4, :].any()
    assert not corner[..., :, :4].any()
    assert torch.equal(corner[..., 4:, 4:], x[..., :28, :28])
    # offset (8, 8) flipped: x shifted up-left by 4, mirrored, 4 zero columns on the left
    last = torch.full((5,), 8)
    far = crop_flip(x, 4, (last, last, ~origin.bool()))
    assert torch.equal(far[..., :28, :], F.pad(x[..., 4:, 4:], (0, 4)).flip(-1)[..., :28, :])


def test_same_seed_same_batch_different_seed_differs():
    x = batch(64)
    a = random_crop_flip(x, generator=generator(7))
    assert torch.equal(a, random_crop_flip(x, generator=generator(7)))
    assert not torch.equal(a, random_crop_flip(x, generator=generator(8)))


def test_global_rng_is_untouched():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    random_crop_flip(batch(8), generator=generator(1))
    random_resized_crop_flip(Image.new("RGB", (40, 30)), 16, generator=generator(1))
    assert torch.equal(torch.random.get_rng_state(), before)


def test_offsets_cover_the_range_and_flips_are_half():
    params = crop_flip_params(20_000, 4, generator=generator(3))
    for offsets in (params.dy, params.dx):
        counts = torch.bincount(offsets, minlength=9)
        assert counts.numel() == 9  # 0..8, nothing outside
        assert counts.min() > 20_000 / 9 * 0.9
    assert float(params.flipped.float().mean()) == pytest.approx(0.5, abs=0.02)
    none = crop_flip_params(1000, 4, generator=generator(3), flip_p=0.0)
    assert not none.flipped.any()


def test_no_flip_option_and_bad_arguments():
    x = batch(256, h=8, w=8)
    out = random_crop_flip(x, 0, generator=generator(0), flip=False)
    assert torch.equal(out, x)
    with pytest.raises(ValueError, match=r"padding must be an integer in \[0, 1024\], got -1"):
        crop_flip_params(4, -1, generator=generator(0))
    with pytest.raises(
        ValueError, match=r"flip_p \(a probability\) must be a finite number in \[0, 1\]"
    ):
        crop_flip_params(4, 1, generator=generator(0), flip_p=1.5)
    with pytest.raises(ValueError, match=r"expects a batch \(N, C, H, W\)"):
        random_crop_flip(x[0], generator=generator(0))


def test_normalize_matches_image_dataset_bitwise():
    x = batch(6)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    data = ImageDataset(ImageArrays(x, torch.zeros(6, dtype=torch.long), ("a",)), mean, std)
    out = normalize(x, data.mean, data.std)
    assert torch.equal(out, torch.stack([data[i][0] for i in range(6)]))
    expected = (x.double() / 255 - torch.tensor(mean).double().view(3, 1, 1)) / torch.tensor(
        std
    ).double().view(3, 1, 1)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)


# -- folder transforms -----------------------------------------------------------------------


def gradient_image(width: int, height: int) -> Image.Image:
    """Pixel (r, g, b) = (column, row, 7) mod 256: a crop's box is readable from its pixels."""
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    array = np.stack([cols % 256, rows % 256, np.full_like(cols, 7)], axis=-1).astype(np.uint8)
    return Image.fromarray(array, "RGB")


@pytest.mark.parametrize(("width", "height"), [(300, 200), (64, 64), (50, 120)])
def test_resized_crop_box_follows_scale_and_ratio(width, height):
    g = generator(5)
    fallback = resized_crop_box(width, height, generator=g, scale=(2.0, 2.0))  # never fits
    fractions, log_ratios, fallbacks = [], [], 0
    for _ in range(2000):
        top, left, h, w = resized_crop_box(width, height, generator=g)
        fallbacks += (top, left, h, w) == fallback
        assert 0 <= top <= top + h <= height
        assert 0 <= left <= left + w <= width
        fractions.append(h * w / (width * height))
        log_ratios.append(math.log(w / h))
    # rounding w and h moves the area and the ratio by at most a pixel's worth
    slack = 2.5 / min(width, height) * 2
    assert min(fractions) >= 0.08 - slack
    assert max(fractions) <= 1.0
    assert max(abs(r) for r in log_ratios) <= math.log(4 / 3) + slack * 2
    assert fallbacks < 100  # 10 tries: the central fallback is rare
    if width == height:  # E[s] over the boxes that fit a square: most of U(0.08, 1) fits
        assert 0.3 < np.mean(fractions) < 0.54


def test_resized_crop_box_fallback_is_the_clamped_central_crop():
    """A 1000×10 image fits no box of ratio ≤ 4/3 with area ≥ 8%: the central crop of height 10
    and width round(10 · 4/3) = 13 remains."""
    assert resized_crop_box(1000, 10, generator=generator(0)) == (0, (1000 - 13) // 2, 10, 13)
    assert resized_crop_box(10, 1000, generator=generator(0)) == ((1000 - 13) // 2, 0, 13, 10)


def test_random_resized_crop_flip_is_the_box_resized_then_maybe_mirrored():
    image = gradient_image(120, 90)
    flips = 0
    for seed in range(40):
        out = random_resized_crop_flip(image, 24, generator=generator(seed))
        assert out.size == (24, 24)
        g = generator(seed)
        top, left, h, w = resized_crop_box(120, 90, generator=g)
        flipped = float(torch.rand((), generator=g)) < 0.5
        flips += flipped
        box = (left, top, left + w, top + h)
        expected = image.resize((24, 24), Image.Resampling.BILINEAR, box=box)
        if flipped:
            expected = expected.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        assert np.array_equal(np.asarray(out), np.asarray(expected))
        # the red channel is the column: the output spans [left, left + w) left to right
        red = np.asarray(out)[:, :, 0].astype(int)
        row = red[12, ::-1] if flipped else red[12]
        assert row[0] <= row[-1]
        assert left - 1 <= row[0] <= row[-1] <= left + w
    assert 8 <= flips <= 32
    assert random_resized_crop_flip(image, 24, generator=generator(3)) == random_resized_crop_flip(
        image, 24, generator=generator(3)
    )


def test_resize_center_crop():
    image = gradient_image(256, 256)
    out = resize_center_crop(image, 224)  # 224 / 0.875 = 256: no resize, the central crop
    assert np.array_equal(np.asarray(out), np.asarray(image)[16:240, 16:240])
    wide = resize_center_crop(gradient_image(512, 300), 224)
    assert wide.size == (224, 224)
    assert resize_center_crop(gradient_image(512, 300), 224) == wide  # deterministic
    tall = gradient_image(100, 200)
    out = resize_center_crop(tall, 32, crop_ratio=0.5)  # shorter side 64, longer 128
    expected = tall.resize((64, 128), Image.Resampling.BILINEAR).crop((16, 48, 48, 80))
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    with pytest.raises(
        ValueError, match=r"crop_ratio must be a finite number in \(0, 1\], got 1.5"
    ):
        resize_center_crop(tall, 32, crop_ratio=1.5)


def test_to_uint8_tensor_is_chw():
    image = gradient_image(5, 3)
    x = to_uint8_tensor(image)
    assert x.shape == (3, 3, 5)
    assert x.dtype == torch.uint8
    assert x[0, 2].tolist() == [0, 1, 2, 3, 4]
    assert x[1, :, 0].tolist() == [0, 1, 2]
    assert to_uint8_tensor(image.convert("L")).shape == (1, 3, 5)
