"""Image folders written by the tests: PNG and JPEG files in the folder:DIR layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, width: int, height: int, seed: int, mode: str = "RGB") -> np.ndarray:
    """A random image saved at ``path`` (format from the suffix); returns its pixels."""
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)
    return pixels


def write_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "emu"),
    per_class: dict[str, int] | None = None,
    sizes: tuple[tuple[int, int], ...] = ((40, 30), (24, 36), (33, 33)),
) -> Path:
    """root/{train,val}/<class>/ with PNG, JPEG (.jpg, .JPEG) files of several sizes, a grey PNG
    in the first class, and files that are not images (ignored by the reader)."""
    per_class = per_class or {"train": 4, "val": 2}
    seed = 0
    for split, count in per_class.items():
        for c, name in enumerate(classes):
            for k in range(count):
                suffix = (".png", ".jpg", ".JPEG")[k % 3]
                width, height = sizes[(k + c) % len(sizes)]
                mode = "L" if (c, k) == (0, 0) else "RGB"
                write_image(root / split / name / f"{k:03d}{suffix}", width, height, seed, mode)
                seed += 1
            (root / split / name / "notes.txt").write_text("not an image")
    (root / "train" / classes[0] / ".DS_Store").write_bytes(b"\x00\x01")
    write_image(root / "train" / classes[0] / "nested" / "deep.png", 8, 8, seed)  # not read
    (root / "train" / "README.md").write_text("one folder per class")
    return root
