"""Users' own images, ``folder:DIR``: one folder per class under ``DIR/train`` and ``DIR/val``::

    DIR/train/cat/001.jpg   DIR/train/dog/a.png   ...
    DIR/val/cat/017.jpeg    DIR/val/dog/b.png     ...

Split "train" reads ``train/``, "test" and "val" read ``val/``. The classes are the sorted names
of the class folders of ``train/`` (label i is the i-th); ``val/`` must have the same class
folders. A class folder's images are its files ending in .jpg, .jpeg or .png (any case), taken
in sorted order; other files (a README, .DS_Store, Thumbs.db) and nested folders are ignored,
and a class folder with no image is refused. Images are decoded with Pillow to RGB when served,
so a file that does not decode raises a ValueError naming it then. Normalization uses the
ImageNet mean and std (:data:`IMAGENET_STATS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import unknown
from .augment import normalize, resize_center_crop, to_uint8_tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_FOLDERS = {"train": "train", "test": "val", "val": "val"}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LAYOUT = (
    "DIR/train/<class>/*.jpg|.jpeg|.png and DIR/val/<class>/..., one folder per class, the same "
    "classes in both"
)


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _split_dir(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_dir():
        raise ValueError(
            f"folder:{root}: the {name}/ folder is missing ({path}); expected {LAYOUT}"
        )
    return path


def scan_folder(root: str | Path, split: str = "train") -> tuple[tuple[str, ...], list[tuple]]:
    """The classes (from ``train/``) and the (path, label) samples of ``split``, checked against
    the layout: a missing folder, a missing or extra class folder, or an empty class is a
    ValueError naming it."""
    if split not in SPLIT_FOLDERS:
        raise unknown("split", split, SPLIT_FOLDERS)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"folder: directory {str(root)!r} does not exist; expected {LAYOUT}")
    classes = _class_folders(_split_dir(root, "train"))
    if not classes:
        raise ValueError(f"folder:{root}: {root / 'train'} has no class folders; expected {LAYOUT}")
    split_dir = _split_dir(root, SPLIT_FOLDERS[split])
    found = _class_folders(split_dir)
    if found != classes:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise ValueError(
            f"folder:{root}: {split_dir} must hold the class folders of train/ "
            f"({', '.join(classes)}); missing: {missing or 'none'}, not in train/: "
            f"{extra or 'none'}"
        )
    samples = []
    for label, name in enumerate(classes):
        files = _images(split_dir / name)
        if not files:
            raise ValueError(
                f"folder:{root}: the class folder {split_dir / name} holds no image "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
        samples.extend((path, label) for path in files)
    return tuple(classes), samples


def decode_image(path: str | Path) -> Image.Image:
    """The image at ``path`` decoded by Pillow and converted to RGB."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: not a decodable JPEG or PNG image ({error})") from None


def spread(n: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over range(n) (all of them for None): the first samples
    of a folder are all of its first class, so a limit keeps every k-th one instead."""
    if limit is None or limit >= n:
        return list(range(n))
    return torch.linspace(0, n - 1, limit, dtype=torch.float64).round().long().tolist()


class ImageFolder(Dataset):
    """The images of one split of ``folder:DIR`` (see the module), served by :meth:`__getitem__`
    as the evaluation view: resized and centre-cropped to ``image_size`` (shorter side to
    image_size / 0.875), normalized per channel, float32 (3, image_size, image_size)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 224,
        limit: int | None = None,
        mean: Sequence[float] = IMAGENET_STATS[0],
        std: Sequence[float] = IMAGENET_STATS[1],
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        self.root, self.split, self.image_size = Path(root).expanduser(), split, image_size
        self.classes, samples = scan_folder(self.root, split)
        self.samples = [samples[i] for i in spread(len(samples), limit)]
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.name = "folder"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> Image.Image:
        """Sample ``index`` decoded to RGB, untransformed."""
        return decode_image(self.samples[index][0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = resize_center_crop(self.image(index), self.image_size)
        x = normalize(to_uint8_tensor(image)[None], self.mean, self.std)[0]
        return x, self.samples[index][1]
