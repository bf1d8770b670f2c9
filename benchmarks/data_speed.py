"""Data time of the in-memory training batches against the training step they feed.

For CIFAR-shaped data (3×32×32 uint8, generated and written as CIFAR-10 python pickles, since
CIFAR is not shipped; the real CIFAR-10 with ``--cifar DIR``) and Fashion-MNIST (1×28×28, the
real files when ``NORMLAB_DATA`` or the repository's sibling ``../shared/data`` holds them), it
times, per batch of 128:

* ``data``  the wait in ``next()`` of :meth:`normlab.data.TrainBatches.epoch` (train=True):
            index the batch, random crop + flip as tensors, normalize per channel;
* ``step``  one training step of ResNet-20 (width 1, ``norm="bn"``, built for the data's
            channels): forward, cross-entropy, backward, SGD step;

and the fraction data / step (the target is ≤ 5 %). Data and step alternate as in a training
loop, round after round, and each one's median over the rounds is reported.

    python benchmarks/data_speed.py [--quick] [--device cuda] [--markdown] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from normlab import models
from normlab.data import TrainBatches

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NORMLAB_DATA", REPO.parent / "shared" / "data"))
BATCH = 128


def write_cifar(directory: Path, samples: int, seed: int = 0) -> str:
    """A CIFAR-10 python-version folder of ``samples`` random training images (5 batches) and a
    small test batch, in the exact pickle layout; returns its spec."""
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_batch = -(-samples // 5)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = per_batch if name != "test_batch" else 16
        content = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, size=n).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    return f"cifar10:{directory}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(data: TrainBatches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        yield from data.epoch(epoch)
        epoch += 1


def measure(
    spec: str, batch_size: int, rounds: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of one batch's data (next()) and one ResNet-20 training step."""
    data = TrainBatches(spec, "train", batch_size, train=True, device=device)
    model = models.create("resnet20", norm="bn", in_channels=data.in_channels).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = _batches(data)
    times: dict[str, list[float]] = {"data": [], "step": []}
    for round_ in range(warmup + rounds):
        _synchronize(device)
        start = time.perf_counter()
        x, y = next(batches)
        _synchronize(device)
        fetched = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _synchronize(device)
        if round_ >= warmup:
            times["data"].append(fetched - start)
            times["step"].append(time.perf_counter() - fetched)
    return {name: statistics.median(values) for name, values in times.items()}


def report(rows: list[tuple[str, tuple, dict[str, float]]], markdown: bool, say: Callable) -> None:
    if markdown:
        say("| data | batch | data ms | step ms | data / step |\n|---|---|---|---|---|")
    else:
        say(f"{'data':28s}{'batch':>20s}{'data ms':>10s}{'step ms':>10s}{'data/step':>11s}")
    for name, shape, times in rows:
        data, step = times["data"] * 1e3, times["step"] * 1e3
        cells = (f"{data:.2f}", f"{step:.1f}", f"{data / step:.2%}")
        if markdown:
            say(f"| {name} | {shape} | " + " | ".join(cells) + " |")
        else:
            say(f"{name:28s}{shape!s:>20s}{cells[0]:>10s}{cells[1]:>10s}{cells[2]:>11s}")


def datasets(directory: Path, samples: int, cifar: str | None) -> list[tuple[str, str, tuple]]:
    """(label, spec, batch shape) of the benchmarked sets."""
    shape = (BATCH, 3, 32, 32)
    if cifar:
        found = [("cifar10", f"cifar10:{cifar}", shape)]
    else:
        found = [(f"CIFAR-shaped ({samples} generated)", write_cifar(directory, samples), shape)]
    fashion = SHARED / "fashion-mnist"
    if (fashion / "train-images-idx3-ubyte.gz").is_file():
        found.append(("fashion-mnist", f"fashion-mnist:{fashion}", (BATCH, 1, 28, 28)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per dataset")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--samples", type=int, default=10_000, help="generated CIFAR images")
    parser.add_argument("--cifar", default=None, help="a real CIFAR-10 directory instead")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds = args.rounds or (10 if args.quick else 40)
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {rounds} "
        f"rounds, median per batch of {BATCH}; data = next() of TrainBatches (train), step = "
        f"ResNet-20 bn fwd + bwd + SGD"
    )
    with tempfile.TemporaryDirectory() as directory:
        rows = [
            (name, shape, measure(spec, BATCH, rounds, warmup=3, device=device))
            for name, spec, shape in datasets(Path(directory), args.samples, args.cifar)
        ]
    report(rows, args.markdown, print)


if __name__ == "__main__":
    main()
