r"""Dataset readers: MNIST and Fashion-MNIST (IDX files) and CIFAR-10/100 (the "python version"
pickles)::

    read_mnist("/data/mnist", split="train")
    read_cifar("/data/cifar-10-batches-py", "cifar10", split="test")

The readers return uint8 images (N, C, H, W) and int64 labels (:class:`ImageArrays`), with each
dataset's customary per-channel mean and std in :data:`STATS`. Every malformed or missing file
raises a ValueError that names the file and what was expected. CIFAR pickles are read with an
unpickler that only rebuilds numpy arrays and plain Python containers: a pickle asking for
anything else is refused.
"""

from __future__ import annotations

import gzip
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._checks import unknown

SPLITS = ("train", "test")

# Per-channel mean and std of the training images in [0, 1].
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True)
class ImageArrays:
    """uint8 images (N, C, H, W), int64 labels (N,) and the class names."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]


# -- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------------

IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({error})") from None


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """The array stored in an IDX file (gzip-compressed or not), validated against its header.

    IDX: two zero bytes, a type code (0x08 = unsigned byte), the number of dims, the dims as
    big-endian uint32, then the data. ``ndim`` is the number of dims the caller expects.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX file's magic number")
    magic = int.from_bytes(raw[:4], "big")
    zeros, code, dims = raw[:2], raw[2], raw[3]
    if zeros != b"\x00\x00" or code not in IDX_TYPES:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic:08x}; expected 0x0000 then a type code "
            f"({', '.join(f'0x{c:02x}' for c in IDX_TYPES)}) and a dim count, e.g. 0x00000803 "
            f"for images, 0x00000801 for labels"
        )
    if ndim is not None and dims != ndim:
        raise ValueError(
            f"{path}: the IDX header (magic 0x{magic:08x}) announces {dims} dims; expected "
            f"{ndim} (magic 0x{(code << 8) | ndim:08x})"
        )
    header = 4 + 4 * dims
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: {len(raw)} bytes, expected {header}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    dtype = IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: the IDX header announces dims {shape} ({expected} bytes of data), but the "
            f"file holds {len(raw) - header} bytes after the header"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _idx_file(directory: Path, prefix: str, kind: str, dims: int, dataset: str) -> Path:
    names = [f"{prefix}-{kind}-idx{dims}-ubyte", f"{prefix}-{kind}.idx{dims}-ubyte"]
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise ValueError(
        f"{dataset}: no {kind} file for the split in {directory}; expected {names[0]} or "
        f"{names[0]}.gz"
    )


def read_mnist(directory: str | Path, split: str = "train", dataset: str = "mnist") -> ImageArrays:
    """MNIST-format IDX images and labels of ``split`` ("train": train-*, "test": t10k-*)."""
    directory = _directory(directory, dataset, "train-images-idx3-ubyte[.gz] and the like")
    prefix = "train" if _split(split) == "train" else "t10k"
    image_path = _idx_file(directory, prefix, "images", 3, dataset)
    label_path = _idx_file(directory, prefix, "labels", 1, dataset)
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(
            f"{dataset}: {image_path.name} and {label_path.name} must hold unsigned bytes "
            f"(type code 0x08), got {images.dtype} and {labels.dtype}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{dataset}: {image_path} holds {images.shape[0]} images but {label_path} holds "
            f"{labels.shape[0]} labels; expected one label per image"
        )
    _check_labels(labels, 10, label_path)
    classes = tuple(str(i) for i in range(10))
    return ImageArrays(torch.from_numpy(images.copy()).unsqueeze(1), _labels(labels), classes)


# -- CIFAR python version --------------------------------------------------------------------

CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels": "labels",
        "names": "label_names",
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels": "fine_labels",
        "names": "fine_label_names",
        "classes": 100,
    },
}


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and Python containers only (as pickled by Python 2, which wrote
    the CIFAR files, or by Python 3 at any protocol)."""

    ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module.removeprefix("numpy.core")
        return super().find_class(module, name)


def read_pickle(path: Path, dataset: str) -> dict[str, object]:
    """A CIFAR pickle as a dict with str keys (the files' keys are bytes: b"data", ...)."""
    if not path.is_file():
        raise ValueError(f"{dataset}: {path} not found; {_cifar_files(dataset)}")
    try:
        with path.open("rb") as f:
            content = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{dataset}: {path} is not a readable CIFAR pickle ({error})") from None
    if not isinstance(content, dict):
        raise ValueError(
            f"{dataset}: {path} holds a {type(content).__name__}; expected a dict with keys "
            f"b'data' and b'{CIFAR[dataset]['labels']}'"
        )
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in content.items()}


def _cifar_files(dataset: str) -> str:
    spec = CIFAR[dataset]
    files = ", ".join([*spec["train"], *spec["test"], spec["meta"]])
    return f"the {dataset} python version ({spec['folder']}/) has {files}"


def read_cifar(
    directory: str | Path, dataset: str = "cifar10", split: str = "train"
) -> ImageArrays:
    """CIFAR-10 or CIFAR-100 (fine labels) images (N, 3, 32, 32) uint8 and labels of
    ``split``. ``directory`` is the extracted folder (cifar-10-batches-py, cifar-100-python) or
    its parent."""
    if dataset not in CIFAR:
        raise unknown("CIFAR dataset", dataset, CIFAR)
    spec = CIFAR[dataset]
    root = _directory(directory, dataset, _cifar_files(dataset))
    if (root / spec["folder"]).is_dir():
        root = root / spec["folder"]
    images, labels = [], []
    for name in spec[_split(split)]:
        data, batch_labels = _cifar_batch(root / name, dataset)
        images.append(data)
        labels.append(batch_labels)
    return ImageArrays(
        torch.from_numpy(np.concatenate(images)).reshape(-1, 3, 32, 32),
        _labels(np.concatenate(labels)),
        _cifar_classes(root, dataset),
    )


def _cifar_batch(path: Path, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    content, key = read_pickle(path, dataset), CIFAR[dataset]["labels"]
    for needed in ("data", key):
        if needed not in content:
            raise ValueError(
                f"{dataset}: {path} lacks the key b'{needed}'; it has "
                f"{sorted(content)} (expected b'data' and b'{key}')"
            )
    data = content["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(
            f"{dataset}: {path}: b'data' must be a uint8 array of shape (N, 3072), got "
            f"{getattr(data, 'dtype', type(data).__name__)} of shape {getattr(data, 'shape', '?')}"
        )
    if data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{dataset}: {path}: b'data' has rows of {data.shape[1]} bytes; expected 3072 "
            f"(3 channels of 32×32)"
        )
    labels = np.asarray(content[key])
    if labels.size and labels.dtype.kind not in "iu":  # (an empty list reads as float64)
        raise ValueError(
            f"{dataset}: {path}: b'{key}' must hold integer class indices, got labels of dtype "
            f"{labels.dtype} (such as {labels.ravel()[:1].tolist()[0]!r}); they would be "
            f"truncated or misread as classes"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"{dataset}: {path} holds {data.shape[0]} images but b'{key}' has shape "
            f"{labels.shape}; expected one label per image"
        )
    _check_labels(labels, CIFAR[dataset]["classes"], path)
    return data, labels


def _cifar_classes(root: Path, dataset: str) -> tuple[str, ...]:
    spec = CIFAR[dataset]
    path = root / spec["meta"]
    if not path.is_file():  # the class names are optional: number them
        return tuple(str(i) for i in range(spec["classes"]))
    names = read_pickle(path, dataset).get(spec["names"])
    if not isinstance(names, (list, tuple)) or len(names) != spec["classes"]:
        raise ValueError(
            f"{dataset}: {path}: expected b'{spec['names']}' to list {spec['classes']} class "
            f"names, got {type(names).__name__}"
            + (f" of length {len(names)}" if isinstance(names, (list, tuple)) else "")
        )
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


# -- shared checks ---------------------------------------------------------------------------


def _directory(directory: str | Path, dataset: str, expected: str) -> Path:
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise ValueError(f"{dataset}: directory {str(path)!r} does not exist; expected {expected}")
    return path


def _split(split: str) -> str:
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    return split


def _check_labels(labels: np.ndarray, classes: int, path: Path) -> None:
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(
            f"{path}: labels range over [{int(labels.min())}, {int(labels.max())}]; expected "
            f"class indices in [0, {classes - 1}]"
        )


def _labels(labels: np.ndarray) -> Tensor:
    return torch.from_numpy(labels.astype(np.int64))
