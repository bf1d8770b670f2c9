"""Data: the dataset readers (IDX, CIFAR pickles, image folders, Gaussian noise) behind one spec
string (:func:`load_data`), batch augmentations (:mod:`.augment`) and the per-epoch batches the
training loop consumes (:class:`TrainBatches`)."""

from .augment import (
    crop_flip,
    crop_flip_params,
    normalize,
    random_crop_flip,
    random_resized_crop_flip,
    resize_center_crop,
    resized_crop_box,
)
from .datasets import GaussianNoise, ImageDataset
from .folder import IMAGENET_STATS, ImageFolder, decode_image, scan_folder
from .loaders import TrainBatches
from .readers import (
    CIFAR,
    GZIP_MAGIC,
    IDX_TYPES,
    SPLITS,
    STATS,
    ImageArrays,
    read_cifar,
    read_idx,
    read_mnist,
    read_pickle,
)
from .specs import DATASETS, GAUSSIAN_SIZES, SPEC_FORMS, load_data, parse_spec

__all__ = [
    "CIFAR",
    "DATASETS",
    "GAUSSIAN_SIZES",
    "GZIP_MAGIC",
    "IDX_TYPES",
    "IMAGENET_STATS",
    "SPEC_FORMS",
    "SPLITS",
    "STATS",
    "GaussianNoise",
    "ImageArrays",
    "ImageDataset",
    "ImageFolder",
    "TrainBatches",
    "crop_flip",
    "crop_flip_params",
    "decode_image",
    "load_data",
    "normalize",
    "parse_spec",
    "random_crop_flip",
    "random_resized_crop_flip",
    "read_cifar",
    "read_idx",
    "read_mnist",
    "read_pickle",
    "resize_center_crop",
    "resized_crop_box",
    "scan_folder",
]
