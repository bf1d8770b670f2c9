"""TrainBatches: batches are the dataset's samples in DistributedSampler's order, augmented
exactly as the per-batch generator says; epochs are reproducible bit for bit; ranks partition
the epoch; eval is the plain normalized data; folders give the same bits with any worker count;
and bad specs and arguments are refused clearly."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from normlab.data import TrainBatches, crop_flip, crop_flip_params, load_data
from normlab.data.augment import normalize, random_resized_crop_flip, to_uint8_tensor
from normlab.data.loaders import mix_seed
from tests.test_data import SHARED, cifar10_dir, mnist_dir

from .images import write_folder


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A CIFAR-10 directory of 5 × 20 train and 20 test images."""
    root = tmp_path_factory.mktemp("cifar")
    cifar10_dir(root, per_batch=20)
    return f"cifar10:{root}"


def epoch_bits(batches: TrainBatches, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in batches.epoch(epoch)]


def assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb)
        assert torch.equal(ya, yb)


def test_train_batches_are_the_sampler_order_cropped_and_flipped(cifar):
    batches = TrainBatches(cifar, "train", 32, train=True, seed=5)
    data = load_data(cifar, "train")
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=5)
    sampler.set_epoch(3)
    order = list(sampler)
    assert batches.indices(3) == order[:96]
    for b, (x, y) in enumerate(batches.epoch(3)):
        index = torch.tensor(order[32 * b : 32 * (b + 1)])
        g = torch.Generator().manual_seed(mix_seed(5, 3, 0, b))
        params = crop_flip_params(32, 4, generator=g)
        expected = normalize(crop_flip(data.images[index], 4, params), data.mean, data.std)
        assert torch.equal(x, expected)
        assert torch.equal(y, data.labels[index])
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
    assert b == 2  # 100 samples, batches of 32, the incomplete last one dropped


def test_epochs_are_reproducible_and_differ(cifar):
    batches = TrainBatches(cifar, "train", 16, train=True, seed=1)
    first = epoch_bits(batches, 0)
    assert_same(first, epoch_bits(batches, 0))
    assert_same(first, epoch_bits(TrainBatches(cifar, "train", 16, train=True, seed=1), 0))
    assert_same(first[2:], list(batches.epoch(0, start=2)))  # resume mid-epoch
    other = epoch_bits(batches, 1)
    assert not torch.equal(first[0][0], other[0][0])
    assert not torch.equal(first[0][1], other[0][1])  # another permutation
    seeded = epoch_bits(TrainBatches(cifar, "train", 16, train=True, seed=2), 0)
    assert not torch.equal(first[0][0], seeded[0][0])
    assert list(batches.epoch(0, start=len(batches))) == []
    with pytest.raises(ValueError, match=r"start must be a batch index in \[0, 6\]"):
        batches.epoch(0, start=7)


def test_global_rng_is_untouched(cifar):
    batches = TrainBatches(cifar, "train", 16, train=True)
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    epoch_bits(batches, 0)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize(("limit", "train"), [(None, True), (None, False), (99, False)])
def test_two_ranks_partition_the_epoch(cifar, limit, train):
    kwargs = {"train": train, "limit": limit, "world_size": 2, "drop_last": False}
    ranks = [TrainBatches(cifar, "train", 8, rank=r, **kwargs) for r in range(2)]
    n = limit or 100
    seen = [sorted(ranks[r].indices(4)) for r in range(2)]
    assert set(seen[0]) | set(seen[1]) == set(range(n))
    overlap = set(seen[0]) & set(seen[1])
    if train:  # DistributedSampler pads an odd epoch with one repeat, for equal shares
        assert len(seen[0]) == len(seen[1]) == ranks[0].num_samples == (n + 1) // 2
        assert len(overlap) == (n % 2)
    else:  # evaluation: each sample on exactly one rank
        assert [len(s) for s in seen] == [ranks[0].num_samples, ranks[1].num_samples]
        assert [len(s) for s in seen] == [(n + 1) // 2, n // 2]
        assert not overlap
    labels = torch.cat([y for r in range(2) for _, y in ranks[r].epoch(4)])
    data = load_data(cifar, "train", limit)
    expected = data.labels[torch.tensor(seen[0] + seen[1])]
    assert sorted(labels.tolist()) == sorted(expected.tolist())


def test_len_and_num_samples(cifar):
    train = TrainBatches(cifar, "train", 32, train=True)
    assert (len(train), train.num_samples) == (3, 96)  # drop_last: the 4 left over are dropped
    whole = TrainBatches(cifar, "train", 32, train=True, drop_last=False)
    assert (len(whole), whole.num_samples) == (4, 100)
    assert [len(y) for _, y in whole.epoch(0)] == [32, 32, 32, 4]
    shard = TrainBatches(cifar, "train", 32, train=True, rank=1, world_size=3)
    assert (len(shard), shard.num_samples) == (1, 32)  # 33 per rank, drop_last
    test = TrainBatches(cifar, "test", 32, train=False, rank=2, world_size=3)
    assert (len(test), test.num_samples) == (1, 6)  # 20 → 7, 7, 6 per rank, not padded
    assert (train.num_classes, train.in_channels, train.image_size) == (10, 3, 32)
    assert train.classes[0] == "airplane"


def test_eval_is_the_plain_data_in_order(cifar):
    batches = TrainBatches(cifar, "test", 8, train=False)
    data = load_data(cifar, "test")
    x = torch.cat([x for x, _ in batches.epoch(0)])
    y = torch.cat([y for _, y in batches.epoch(7)])
    assert torch.equal(x, torch.stack([data[i][0] for i in range(len(data))]))
    assert torch.equal(y, data.labels)
    assert_same(epoch_bits(TrainBatches(cifar, "val", 8, train=False), 0), epoch_bits(batches, 0))
    # augment overrides: train order without augmentation, eval order with it
    plain = TrainBatches(cifar, "train", 10, train=True, augment=False)
    train_data = load_data(cifar, "train")
    x = next(plain.epoch(0))[0]
    assert torch.equal(x, torch.stack([train_data[i][0] for i in plain.indices(0)[:10]]))
    augmented = next(TrainBatches(cifar, "test", 8, train=False, augment=True).epoch(0))[0]
    assert not torch.equal(augmented, x[:8])


def test_mnist_crops_with_padding_2_and_never_flips(tmp_path):
    mnist_dir(tmp_path, compress=True, n_train=40)
    data = load_data(f"mnist:{tmp_path}", "train")
    batches = TrainBatches(f"mnist:{tmp_path}", "train", 40, train=True, seed=3)
    (x, _), index = next(batches.epoch(0)), torch.tensor(batches.indices(0))
    g = torch.Generator().manual_seed(mix_seed(3, 0, 0, 0))
    params = crop_flip_params(40, 2, generator=g, flip_p=0.0)
    assert not params.flipped.any()
    expected = normalize(crop_flip(data.images[index], 2, params), data.mean, data.std)
    assert torch.equal(x, expected)
    fashion = TrainBatches(f"fashion-mnist:{tmp_path}", "train", 40, train=True, seed=3)
    g = torch.Generator().manual_seed(mix_seed(3, 0, 0, 0))
    params = crop_flip_params(40, 2, generator=g, flip_p=0.5)
    assert params.flipped.any()
    fashion_data = load_data(f"fashion-mnist:{tmp_path}")
    expected = normalize(
        crop_flip(data.images[index], 2, params), fashion_data.mean, fashion_data.std
    )
    assert torch.equal(next(fashion.epoch(0))[0], expected)


def test_gaussian_is_generated_not_augmented():
    batches = TrainBatches("gaussian:1x8x8", "train", 5, train=True, limit=12, seed=4)
    data = load_data("gaussian:1x8x8", "train", limit=12)
    (x, y), index = next(batches.epoch(2)), batches.indices(2)[:5]
    assert torch.equal(x, torch.stack([data[i][0] for i in index]))
    assert y.tolist() == [data[i][1] for i in index]
    assert (len(batches), batches.in_channels, batches.image_size) == (2, 1, 8)
    with pytest.raises(ValueError, match="gaussian noise has no augmentation"):
        TrainBatches("gaussian", "train", 5, train=True, augment=True)


# -- folders ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = write_folder(tmp_path_factory.mktemp("folder"))
    return f"folder:{root}"


def test_folder_train_batches_follow_the_per_sample_seeds(folder):
    batches = TrainBatches(folder, "train", 4, train=True, seed=9, image_size=16)
    assert (len(batches), batches.num_samples, batches.image_size) == (3, 12, 16)
    assert (batches.num_classes, batches.in_channels) == (3, 3)
    data = batches.data
    x, y = next(batches.epoch(1))
    assert x.shape == (4, 3, 16, 16)
    for k, index in enumerate(batches.indices(1)[:4]):
        g = torch.Generator().manual_seed(mix_seed(9, 1, index))
        image = random_resized_crop_flip(data.image(index), 16, generator=g)
        assert torch.equal(x[k], normalize(to_uint8_tensor(image)[None], data.mean, data.std)[0])
        assert int(y[k]) == data.samples[index][1]
    assert_same(epoch_bits(batches, 1), epoch_bits(batches, 1))
    assert not torch.equal(epoch_bits(batches, 2)[0][0], x)


def test_folder_workers_change_nothing(folder):
    """Worker processes (started per epoch) give the bits of the in-process loader."""
    serial = TrainBatches(folder, "train", 4, train=True, image_size=16)
    workers = TrainBatches(folder, "train", 4, train=True, image_size=16, workers=2)
    assert_same(epoch_bits(serial, 0), epoch_bits(workers, 0))


def test_folder_eval_and_sharding(folder):
    evaluation = TrainBatches(folder, "val", 4, train=False, image_size=16)
    view = load_data(folder, "test")
    x = torch.cat([x for x, _ in evaluation.epoch(0)])
    assert x.shape == (6, 3, 16, 16)
    assert [len(y) for _, y in evaluation.epoch(0)] == [4, 2]
    small = type(view)(view.root, "val", image_size=16)
    assert torch.equal(x, torch.stack([small[i][0] for i in range(6)]))
    kwargs = {"train": True, "world_size": 2, "image_size": 16}
    ranks = [TrainBatches(folder, "train", 3, rank=r, **kwargs) for r in range(2)]
    seen = [set(b.indices(0)) for b in ranks]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(12))


# -- real data and errors --------------------------------------------------------------------


def test_real_fashion_mnist():
    directory = SHARED / "fashion-mnist"
    if not (directory / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no fashion-mnist files in {directory} (set NORMLAB_DATA)")
    spec = f"fashion-mnist:{directory}"
    train = TrainBatches(spec, "train", 128, train=True)
    assert (len(train), train.num_samples) == (468, 468 * 128)
    assert (train.num_classes, train.in_channels, train.image_size) == (10, 1, 28)
    x, y = next(train.epoch(0))
    assert x.shape == (128, 1, 28, 28)
    assert 0 <= int(y.min()) <= int(y.max()) <= 9
    test = TrainBatches(spec, "test", 1000, train=False)
    assert (len(test), test.num_samples) == (10, 10_000)
    x = torch.cat([x for x, _ in test.epoch(0)])
    assert float(x.mean()) == pytest.approx(0.0, abs=0.02)  # normalized with its own statistics
    assert float(x.std()) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("cifar01:/d", {}, r"unknown dataset 'cifar01'.*Did you mean 'cifar10'"),
        ("fashion_mnist:/d", {}, "Did you mean 'fashion-mnist'"),
        ("gaussian", {"split": "valid"}, r"unknown split 'valid'.*Did you mean 'val'"),
        ("gaussian", {"batch_size": 0}, "batch_size must be a positive integer"),
        ("gaussian", {"rank": 2, "world_size": 2}, r"rank must be in \[0, 1\]"),
        ("gaussian", {"workers": -1}, "workers must be a non-negative integer"),
        ("gaussian", {"limit": 0}, "limit must be a positive integer"),
        ("gaussian", {"image_size": 64}, "image_size=64 does not apply to gaussian"),
        ("gaussian:3x8x9", {}, r"needs square images \(C, H, H\), got \(3, 8, 9\)"),
        ("gaussian", {"limit": 10, "batch_size": 16}, "fewer than batch_size 16 with drop_last"),
        ("folder", {}, "folder needs its directory"),
    ],
)
def test_bad_input(spec, kwargs, message):
    arguments = {"split": "train", "batch_size": 4, **kwargs}
    split, batch_size = arguments.pop("split"), arguments.pop("batch_size")
    with pytest.raises(ValueError, match=message):
        TrainBatches(spec, split, batch_size, train=True, **arguments)


def test_folder_without_the_layout_says_which_folder(tmp_path):
    write_folder(tmp_path, per_class={"train": 2})
    assert len(TrainBatches(f"folder:{tmp_path}", "train", 2, train=True)) == 3
    with pytest.raises(ValueError, match=r"the val/ folder is missing"):
        TrainBatches(f"folder:{tmp_path}", "val", 2, train=False)
    with pytest.raises(ValueError, match=r"the train/ folder is missing"):
        TrainBatches(f"folder:{tmp_path / 'train'}", "val", 2, train=False)
