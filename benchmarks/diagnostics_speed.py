"""What the streaming diagnostics cost against a plain forward of the same model, in one process.

For a zoo model (default: ResNet-50 at width 0.5, the PN paper's ImageNet architecture) and one
probe batch, each round times, in an order that rotates between rounds:

* ``forward``   the model under ``torch.no_grad`` (the baseline of the ratios)
* ``power``     ``power_profile``: the power decomposition of every normalization step (PN Eq. 5)
* ``variance``  ``activation_variance``: every activation step's channel variance (Beyond BN)
* ``spp``       ``signal_propagation``: the SPP statistics of every residual block (Brock et al.)

and reports each one's median time and the median of its per-round ratios to ``forward``. The
diagnostics read each hooked tensor once (``normlab.diagnostics.statistics.channel_summary``: on
CPU one pass of a C++ kernel accumulating in float64, no copy), check finiteness on the (5, C)
summary, and merge C-sized summaries across batches. ``--clock cpu`` counts the process's CPU
time, which other processes disturb much less than wall time (use it with ``--threads 1``).

    python benchmarks/diagnostics_speed.py [--model resnet50] [--width 0.5] [--norms bn,gn8+pn]
        [--batch 8] [--size 128] [--rounds 7] [--threads 1] [--clock wall|cpu] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from normlab import models
from normlab.diagnostics import activation_variance, power_profile, signal_propagation

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def candidates(model: nn.Module, x: Tensor) -> dict[str, Callable[[], object]]:
    """The timed passes; the first, a plain forward, is the baseline."""

    def forward() -> None:
        with torch.no_grad():
            model(x)

    return {
        "forward": forward,
        "power": lambda: power_profile(model, x),
        "variance": lambda: activation_variance(model, x),
        "spp": lambda: signal_propagation(model, x),
    }


def measure(
    model: nn.Module, x: Tensor, rounds: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, tuple[float, float]]:
    """Per candidate: (median seconds, median per-round ratio to the plain forward)."""
    passes = candidates(model, x)
    for run in passes.values():  # warm-up: builds the kernel, touches the allocator
        run()
    names = list(passes)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            start = clock()
            passes[name]()
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            times[name].append(clock() - start)
    base = times["forward"]
    return {
        name: (
            statistics.median(values),
            statistics.median(t / b for t, b in zip(values, base, strict=True)),
        )
        for name, values in times.items()
    }


def report(
    rows: list[tuple[str, dict[str, tuple[float, float]]]], say: Callable[[str], None] = print
) -> None:
    names = list(rows[0][1])
    say("| norm | " + " | ".join(f"{n} ms (×)" for n in names) + " |")
    say("|---" * (len(names) + 1) + "|")
    for norm, times in rows:
        cells = [f"{times[n][0] * 1e3:.1f} ({times[n][1]:.3f}×)" for n in names]
        say(f"| {norm} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--norms", default="bn,gn8+pn")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    rows = []
    for norm in args.norms.split(","):
        model = models.create(args.model, norm=norm, width=args.width).to(device).eval()
        rows.append((norm, measure(model, x, args.rounds, CLOCKS[args.clock])))
    print(
        f"{args.model} width {args.width}, batch {args.batch} at {args.size}px on {device} "
        f"({args.threads} thread(s)), {args.rounds} rounds, {args.clock} clock"
    )
    report(rows)


if __name__ == "__main__":
    main()
