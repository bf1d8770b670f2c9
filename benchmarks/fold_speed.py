"""Inference latency of folded models (normlab.fold) against their unfolded and plain baselines.

For ResNet-50 and EfficientNet-B0 (full width) it times one evaluation-mode forward pass
(``torch.no_grad``) of a batch of 8 images (128 px by default) of:

* ``gn8``            the model built with ``norm="gn8"``, eager     <- the baseline of PN's ratio
* ``gn8+pn folded``  ``normlab.fold`` of the model built with ``"gn8+pn"``  (target ≤ 1.02×)
* ``gn8+pn``         the same model unfolded, for reference
* ``bn``             the model built with ``"bn"``, eager           <- the baseline of BN's ratio
* ``bn folded``      ``normlab.fold`` of it (BN folded into the convolutions)

Candidates run interleaved, round after round, and each one's median over the rounds is
reported, so that drifts of the machine (frequency, other processes) hit all of them alike.

    python benchmarks/fold_speed.py [--quick] [--size 128] [--batch 8] [--rounds 15] [--threads 1]
        [--markdown]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

import normlab
from normlab import models

MODELS = ("resnet50", "efficientnet_b0")
CANDIDATES = ("gn8", "gn8+pn folded", "gn8+pn", "bn", "bn folded")
RATIOS = (("gn8+pn folded", "gn8"), ("gn8+pn", "gn8"), ("bn folded", "bn"))


def candidates(name: str, **kwargs) -> dict[str, nn.Module]:
    """The compared models, in evaluation mode, with the same random initialisation per spec."""
    built = {}
    for spec in ("gn8", "gn8+pn", "bn"):
        torch.manual_seed(0)
        built[spec] = models.create(name, norm=spec, **kwargs).eval()
    return {
        "gn8": built["gn8"],
        "gn8+pn folded": normlab.fold(built["gn8+pn"]),
        "gn8+pn": built["gn8+pn"],
        "bn": built["bn"],
        "bn folded": normlab.fold(built["bn"]),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(module: nn.Module, x: Tensor) -> float:
    """Seconds for one evaluation forward pass."""
    _synchronize(x.device)
    start = time.perf_counter()
    with torch.no_grad():
        module(x)
    _synchronize(x.device)
    return time.perf_counter() - start


def interleaved(modules: dict[str, nn.Module], x: Tensor, rounds: int, warmup: int) -> dict:
    """Median seconds per forward of each module, run round after round in turn."""
    modules = {name: m.to(x.device) for name, m in modules.items()}
    times: dict[str, list[float]] = {name: [] for name in modules}
    for step in range(warmup + rounds):
        for name, module in modules.items():
            elapsed = time_forward(module, x)
            if step >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(
    name: str, batch: int, size: int, device: torch.device, rounds: int, warmup: int, **kwargs
) -> dict[str, float]:
    modules = candidates(name, **kwargs)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    return interleaved(modules, x, rounds, warmup)


def report(
    results: list[tuple[str, tuple[int, ...], dict[str, float]]], markdown: bool, say: Callable
) -> None:
    labels = [f"{a} / {b}" for a, b in RATIOS]
    if markdown:
        say(
            "| model | input | "
            + " | ".join(f"{c} ms" for c in CANDIDATES)
            + " | "
            + " | ".join(labels)
            + " |"
        )
        say("|---" * (2 + len(CANDIDATES) + len(labels)) + "|")
    for name, shape, times in results:
        cells = [f"{times[c] * 1e3:.1f}" for c in CANDIDATES]
        ratios = [f"{times[a] / times[b]:.3f}×" for a, b in RATIOS]
        if markdown:
            say(f"| {name} | {shape} | " + " | ".join(cells + ratios) + " |")
        else:
            timed = "  ".join(f"{c} {t} ms" for c, t in zip(CANDIDATES, cells, strict=True))
            said = "  ".join(f"{lab} {r}" for lab, r in zip(labels, ratios, strict=True))
            say(f"{name} {shape}: {timed}\n    {said}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 px, fewer rounds")
    parser.add_argument("--size", type=int, default=128, help="input side in pixels (128)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (8)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (15)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (torch's)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = 64 if args.quick else args.size
    rounds = args.rounds or (5 if args.quick else 15)
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {rounds} "
        f"rounds, median eval forward time (no_grad), batch {args.batch}, {size} px"
    )
    results = [
        (name, (args.batch, 3, size, size), measure(name, args.batch, size, device, rounds, 2))
        for name in MODELS
    ]
    report(results, args.markdown, print)


if __name__ == "__main__":
    main()
