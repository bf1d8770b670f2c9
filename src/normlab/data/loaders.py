r"""The batches the training loop consumes: :class:`TrainBatches`, one split of one dataset spec,
epoch by epoch, each epoch a pure function of (seed, epoch, rank).

* Order and sharding: torch's :class:`~torch.utils.data.distributed.DistributedSampler`
  (``shuffle=train``, ``seed``, ``drop_last``) with ``set_epoch(epoch)``, as under DDP: each of
  the ``world_size`` ranks takes every world_size-th index of the epoch's permutation. Without
  ``drop_last`` the permutation is padded with its first indices up to a multiple of
  world_size (so up to world_size − 1 samples are seen twice); with it the tail is dropped.
  Evaluation without ``drop_last`` takes a :class:`ShardSampler` instead: every sample on
  exactly one rank, none repeated, so that test metrics summed over ranks count each once.
* In-memory sets (mnist, fashion-mnist, cifar10, cifar100) hold their uint8 images on
  ``device``; a batch is one index of the whole batch, one vectorized augmentation
  (:func:`~normlab.data.augment.random_crop_flip`) and one normalization. The augmentation of
  batch b draws from a generator seeded by a hash of (seed, epoch, rank, b), so ``epoch(e)``
  gives the same bits every time and ``epoch(e, start=b)`` resumes at batch b. Training
  augmentation (:data:`CROP_FLIP`): CIFAR, random crop with padding 4 and a horizontal flip;
  Fashion-MNIST, crop with padding 2 and a flip (garments are mirror-symmetric classes); MNIST,
  crop with padding 2 and no flip (a mirrored digit is not that digit).
* gaussian: noise drawn per index (nothing is stored), not augmented: it is i.i.d. already.
* Folders (``folder:DIR``): a DataLoader with ``workers`` worker processes; each sample is
  decoded, then (train) randomly resized-cropped to image_size (default 224) and flipped with a
  generator seeded by a hash of (seed, epoch, index) — so the worker count changes nothing — or
  (eval) resized and centre-cropped; batches are normalized with the ImageNet statistics on
  ``device``.
* Evaluation (``train=False``): no augmentation, no shuffle, every sample kept
  (``drop_last=False``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from .._checks import check_bool, check_device, check_int, unknown
from .augment import (
    crop_flip,
    crop_flip_params,
    normalize,
    random_resized_crop_flip,
    resize_center_crop,
    to_uint8_tensor,
)
from .datasets import MAX_SIDE, GaussianNoise, ImageDataset
from .folder import ImageFolder
from .specs import _check_limit, load_data, parse_spec

SPLIT_NAMES = ("train", "test", "val")  # "val" is the test split of the in-memory sets
# dataset → (crop padding, horizontal flip) of the training augmentation
CROP_FLIP = {
    "cifar10": (4, True),
    "cifar100": (4, True),
    "fashion-mnist": (2, True),
    "mnist": (2, False),
}
FOLDER_IMAGE_SIZE = 224


def mix_seed(*values: int) -> int:
    """A 63-bit seed hashed (BLAKE2b) from integers: nearby tuples give unrelated seeds."""
    digest = hashlib.blake2b(",".join(map(str, values)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _nonnegative_int(name: str, value: object, minimum: int = 0) -> int:
    return check_int(name, value, minimum)


class _MemorySource:
    """uint8 images on the device, batched by indexing, augmented and normalized as tensors."""

    def __init__(self, data: ImageDataset, crop: tuple[int, bool] | None, device: torch.device):
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.mean, self.std = data.mean.to(device), data.std.to(device)
        self.crop = crop

    def batch(self, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        indices = indices.to(self.images.device)
        x = self.images[indices]
        if self.crop is not None:
            padding, flip = self.crop
            params = crop_flip_params(len(x), padding, generator=generator, flip_p=0.5 * flip)
            x = crop_flip(x, padding, params)
        return normalize(x, self.mean, self.std), self.labels[indices]


class _NoiseSource:
    """Gaussian noise, generated per index (it is not stored)."""

    def __init__(self, data: GaussianNoise, device: torch.device) -> None:
        self.data, self.device = data, device

    def batch(self, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        samples = [self.data[i] for i in indices.tolist()]
        x = torch.stack([image for image, _ in samples])
        y = torch.tensor([label for _, label in samples], dtype=torch.int64)
        return x.to(self.device), y.to(self.device)


class FolderSamples(Dataset):
    """The items of a folder for a DataLoader: item (index, seed) is the uint8 image
    (3, size, size) of sample ``index`` — randomly resized-cropped and flipped with a generator
    seeded by ``seed`` when ``augment``, else resized and centre-cropped — and its label."""

    def __init__(self, folder: ImageFolder, augment: bool) -> None:
        self.folder, self.augment = folder, augment

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, int]:
        index, seed = item
        image, size = self.folder.image(index), self.folder.image_size
        if self.augment:
            generator = torch.Generator().manual_seed(seed)
            image = random_resized_crop_flip(image, size, generator=generator)
        else:
            image = resize_center_crop(image, size)
        return to_uint8_tensor(image), self.folder.samples[index][1]


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of a dataset of ``length``: every sample on
    exactly one process, none repeated, shares differing by at most one (for evaluation).
    ``set_epoch`` is accepted and changes nothing (the order is fixed)."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
        self.length, self.rank, self.world_size = length, rank, world_size

    @property
    def num_samples(self) -> int:
        return len(self)

    def set_epoch(self, epoch: int) -> None:
        del epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


class TrainBatches:
    """Batches of one split for one epoch at a time, a pure function of (seed, epoch, rank).

    Args:
        dataset_spec: a data spec (:data:`~normlab.data.SPEC_FORMS`), e.g. ``cifar10:DIR``,
            ``folder:DIR``.
        split: "train", or "test" / "val" (the same split: a folder's val/).
        batch_size: samples per batch (per rank).
        train: shuffle and augment (the augmentation follows the module docstring).
        seed: seeds the sampler's permutation and the augmentation.
        limit: keep the first ``limit`` samples of the split (a folder: spread over its classes).
        rank, world_size: this process's shard, as DistributedSampler takes them.
        workers: DataLoader worker processes of a folder (the in-memory sets use none).
        drop_last: drop the sampler's uneven tail and the last incomplete batch; None: ``train``.
        image_size: a folder's output size (default 224); the in-memory sets keep theirs.
        device: where the batches (and the in-memory images) live.
        augment: override of the augmentation (None: ``train``).
    """

    def __init__(
        self,
        dataset_spec: str,
        split: str,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        limit: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        drop_last: bool | None = None,
        image_size: int | None = None,
        device: str | torch.device = "cpu",
        augment: bool | None = None,
    ) -> None:
        if split not in SPLIT_NAMES:
            raise unknown("split", split, SPLIT_NAMES)
        self.batch_size = _nonnegative_int("batch_size", batch_size, 1)
        self.world_size = _nonnegative_int("world_size", world_size, 1)
        self.rank = _nonnegative_int("rank", rank)
        if self.rank >= self.world_size:
            raise ValueError(
                f"rank must be in [0, {world_size - 1}] for world_size {world_size}, got {rank}"
            )
        self.workers = _nonnegative_int("workers", workers)
        _check_limit(limit)
        self.train, self.seed = check_bool("train", train), check_int("seed", seed, None)
        if image_size is not None:
            check_int("image_size", image_size, 1, MAX_SIDE)
        self._augment_arg = augment
        self.augment = self.train if augment is None else bool(augment)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.device = check_device(device)
        self.name, _ = parse_spec(dataset_spec)
        self.data = self._open(dataset_spec, split, limit, image_size)
        self.sampler = self._sampler()
        if len(self) == 0:
            raise ValueError(
                f"{dataset_spec} ({split}): rank {rank} of {world_size} has "
                f"{self.sampler.num_samples} samples, fewer than batch_size {batch_size} with "
                f"drop_last; lower batch_size or pass drop_last=False"
            )

    def _sampler(self) -> Sampler[int]:
        """DistributedSampler for training; for evaluation without drop_last, a shard that
        repeats no sample (DistributedSampler would pad the last shares with repeats, counting
        them twice in the test metrics)."""
        if not self.train and not self.drop_last:
            return ShardSampler(len(self.data), self.rank, self.world_size)
        return DistributedSampler(
            self.data,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=self.train,
            seed=self.seed,
            drop_last=self.drop_last,
        )

    def _open(self, spec: str, split: str, limit: int | None, image_size: int | None) -> Dataset:
        if self.name == "folder":
            root = spec.strip().partition(":")[2]
            if not root:
                raise ValueError(
                    f"data spec {spec!r}: folder needs its directory, as 'folder:DIR' (DIR "
                    f"holding train/ and val/ class folders)"
                )
            size = FOLDER_IMAGE_SIZE if image_size is None else image_size
            data = ImageFolder(root, split, image_size=size, limit=limit)
            self._source = None
            self._samples = FolderSamples(data, self.augment)
            return data
        data = load_data(spec, "test" if split == "val" else split, limit)
        shape = data.input_shape
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"{spec}: TrainBatches needs square images (C, H, H), got {shape}")
        if image_size is not None and image_size != shape[1]:
            raise ValueError(
                f"image_size={image_size} does not apply to {self.name}, whose images are "
                f"{shape[1]}×{shape[2]}; image_size sets the size of folder: images only"
            )
        if isinstance(data, GaussianNoise):
            if self._augment_arg:
                raise ValueError(
                    f"{spec}: gaussian noise has no augmentation; pass augment=None or False"
                )
            self.augment = False
            self._source = _NoiseSource(data, self.device)
        else:
            crop = CROP_FLIP[self.name] if self.augment else None
            self._source = _MemorySource(data, crop, self.device)
        return data

    def __len__(self) -> int:
        n = self.sampler.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.data.classes)

    @property
    def in_channels(self) -> int:
        return self.data.input_shape[0]

    @property
    def image_size(self) -> int:
        return self.data.input_shape[1]

    @property
    def num_samples(self) -> int:
        """Samples of the split this rank sees per epoch (a dropped last batch not counted)."""
        return len(self) * self.batch_size if self.drop_last else self.sampler.num_samples

    def indices(self, epoch: int) -> list[int]:
        """This rank's sample indices of ``epoch``, in order (DistributedSampler's)."""
        self.sampler.set_epoch(_nonnegative_int("epoch", epoch))
        return list(self.sampler)[: self.num_samples]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches (x float32 normalized, y int64), both on ``device``, of ``epoch``,
        from batch ``start`` on (0 ≤ start ≤ len(self))."""
        order = self.indices(epoch)
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(self):
            raise ValueError(f"start must be a batch index in [0, {len(self)}], got {start!r}")
        size = self.batch_size
        batches = [order[b * size : (b + 1) * size] for b in range(start, len(self))]
        if self._source is None:
            return self._folder_batches(batches, epoch)
        return self._memory_batches(batches, epoch, start)

    def _memory_batches(
        self, batches: list[list[int]], epoch: int, start: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        for b, indices in enumerate(batches, start):
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.rank, b))
            yield self._source.batch(torch.tensor(indices, dtype=torch.int64), generator)

    def _folder_batches(
        self, batches: list[list[int]], epoch: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        seeded = [[(i, mix_seed(self.seed, epoch, i)) for i in batch] for batch in batches]
        loader = DataLoader(
            self._samples,
            batch_sampler=seeded,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        mean, std = self.data.mean.to(self.device), self.data.std.to(self.device)
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            yield normalize(x, mean, std), y.to(self.device, non_blocking=True)
