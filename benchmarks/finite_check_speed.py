"""The cost of normlab's finite checks of batch-statistics normalizers, on a training step.

Every BatchNorm (VarianceNorm, EvoNorm-B0, SyncBatchNorm) in training checks that the statistics
of its batch are finite before they reach its running statistics (``normlab._checks.
finite_statistics``: a reduction over the C-sized mean and variance, one boolean read back per
forward). This times one training step (forward and backward, ``model.zero_grad`` excluded) of a
zoo model with the checks on and off (``normlab.set_finite_checks``), in alternating order round
after round, and reports the median of the per-round ratios. For comparison it also times what a
scan of the inputs would cost: ``torch.isfinite(x).all()`` on every input the normalizers saw.
``--clock cpu`` measures the process's CPU time instead of wall time: on a machine that other
processes keep busy, being descheduled then does not count (use it with ``--threads 1``).

    python benchmarks/finite_check_speed.py [--model resnet20] [--norm bn] [--batch 128]
        [--size 32] [--rounds 15] [--threads 1] [--device cpu] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor, nn

import normlab
from normlab import models
from normlab._checks import finite_statistics
from normlab.layers import BatchDependentNorm

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(model: nn.Module, x: Tensor, y: Tensor, checks: bool) -> float:
    previous = normlab.set_finite_checks(checks)
    try:
        model.zero_grad(set_to_none=True)
        _sync(x.device)
        start = clock()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        _sync(x.device)
        return clock() - start
    finally:
        normlab.set_finite_checks(previous)


def normalizer_inputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The inputs every batch-statistics normalizer of ``model`` sees in one forward."""
    seen: list[Tensor] = []
    hooks = [
        m.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
        for m in model.modules()
        if isinstance(m, BatchDependentNorm)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def scan_seconds(tensors: list[Tensor], repeats: int = 20) -> float:
    """Seconds of ``isfinite(x).all()`` over every normalizer input of one forward (median)."""
    times = []
    for _ in range(repeats):
        _sync(tensors[0].device)
        start = clock()
        for t in tensors:
            bool(torch.isfinite(t).all())
        _sync(tensors[0].device)
        times.append(clock() - start)
    return statistics.median(times)


def statistics_seconds(tensors: list[Tensor], repeats: int = 20) -> float:
    """Seconds of what the check adds to each normalizer of one forward (median of repeats):
    saving the C-sized running statistics and the step count, then ``finite_statistics`` on
    the updated mean and variance."""
    stats = [(t.new_zeros(t.shape[1]), t.new_ones(t.shape[1])) for t in tensors]
    count = torch.tensor(1)
    times = []
    for _ in range(repeats):
        _sync(tensors[0].device)
        start = clock()
        for mean, var in stats:
            _ = (mean.clone(), var.clone(), count - 1)
            finite_statistics(mean, var)
        _sync(tensors[0].device)
        times.append(clock() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--norm", default="bn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = models.create(args.model, norm=args.norm).to(device).train()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(10, (args.batch,), device=device)
    for checks in (True, False, True, False):  # warm-up
        step_seconds(model, x, y, checks)
    on, off, ratios = [], [], []
    for index in range(args.rounds):
        order = (True, False) if index % 2 == 0 else (False, True)
        times = {checks: step_seconds(model, x, y, checks) for checks in order}
        on.append(times[True])
        off.append(times[False])
        ratios.append(times[True] / times[False])
    inputs = normalizer_inputs(model, x)
    scan, itself = scan_seconds(inputs), statistics_seconds(inputs)
    values = sum(t.numel() for t in inputs)
    print(
        f"{args.model} norm={args.norm} batch {args.batch} {args.size}px on {device} "
        f"({args.threads} thread(s)), {args.rounds} rounds, {args.clock} clock: forward+backward"
    )
    print(f"  checks on : median {statistics.median(on) * 1e3:8.1f} ms")
    print(f"  checks off: median {statistics.median(off) * 1e3:8.1f} ms")
    ratio = statistics.median(ratios)
    spread = (min(ratios), max(ratios))
    print(f"  on/off    : median {ratio:.4f} (rounds from {spread[0]:.4f} to {spread[1]:.4f})")
    print(
        f"  the check itself: {itself * 1e3:.3f} ms for {len(inputs)} normalizers, "
        f"{itself / statistics.median(off) * 100:.3f}% of a step"
    )
    print(
        f"  an input scan instead: {scan * 1e3:.2f} ms for {len(inputs)} normalizer inputs "
        f"({values / 1e6:.1f} M values), {scan / statistics.median(off) * 100:.2f}% of a step"
    )


if __name__ == "__main__":
    main()
