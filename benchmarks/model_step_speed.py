"""A whole training step of zoo models under each normalization scheme, in one process.

For each model (default: ResNet-50 and EfficientNet-B0 on small inputs) and scheme (default: bn,
gn8, gn8+pn, ln+pn, evo-s0, frn; evo-s0/8 on EfficientNet, whose widths 32 groups do not divide)
it times one training step as users run it — forward, cross-entropy loss, backward, SGD step
with momentum — round after round, the schemes in an order that rotates between rounds, and
reports each scheme's median step time with the medians of its per-round ratios to ``gn8`` and
to ``bn``. Every scheme's model is built from the same seed; EfficientNet keeps its SiLU, so
``gn8+pn`` there is PN with φ = silu (the PN paper's EfficientNet experiments). ``--clock cpu``
counts the process's CPU time, which other processes disturb much less than wall time (use it
with ``--threads 1``).

    python benchmarks/model_step_speed.py [--models resnet50,efficientnet_b0]
        [--schemes bn,gn8,gn8+pn,ln+pn,evo-s0,frn] [--batch 8] [--size 64] [--rounds 5]
        [--threads 1] [--clock wall|cpu] [--device cpu] [--markdown]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from normlab import models

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
SCHEMES = ["bn", "gn8", "gn8+pn", "ln+pn", "evo-s0", "frn"]
MODELS = ["resnet50", "efficientnet_b0"]
# EvoNorm-S0's 32 groups do not divide EfficientNet's widths (144, 240, ...): groups of 8 channels
MODEL_SCHEMES = {"efficientnet_b0": [s if s != "evo-s0" else "evo-s0/8" for s in SCHEMES]}


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One step of SGD with momentum on (x, y), as a closure."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def measure(
    name: str,
    schemes: list[str],
    batch: int,
    size: int,
    device: torch.device,
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, tuple[float, dict[str, float]]]:
    """Per scheme: (median step seconds, {reference scheme: median per-round ratio})."""
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(10, (batch,), device=device)
    steps = {}
    for scheme in schemes:
        torch.manual_seed(0)
        model = models.create(name, norm=scheme, num_classes=10).to(device).train()
        steps[scheme] = training_step(model, x, y)
        steps[scheme]()  # warm-up: kernels built, allocator and optimizer state ready
    times: dict[str, list[float]] = {scheme: [] for scheme in schemes}
    for index in range(rounds):
        shift = index % len(schemes)
        for scheme in schemes[shift:] + schemes[:shift]:
            _sync(device)
            start = clock()
            steps[scheme]()
            _sync(device)
            times[scheme].append(clock() - start)
    references = [s for s in ("gn8", "bn") if s in schemes]
    return {
        scheme: (
            statistics.median(values),
            {
                ref: statistics.median(a / b for a, b in zip(values, times[ref], strict=True))
                for ref in references
            },
        )
        for scheme, values in times.items()
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def report(
    name: str,
    results: dict[str, tuple[float, dict[str, float]]],
    markdown: bool = False,
    say: Callable[[str], None] = print,
) -> None:
    references = list(next(iter(results.values()))[1])
    header = ["scheme", "step ms", *(f"/ {ref}" for ref in references)]
    if markdown:
        say(f"**{name}**")
        say("| " + " | ".join(header) + " |")
        say("|---" * len(header) + "|")
    else:
        say(name)
        say("  ".join(f"{h:>10}" for h in header))
    for scheme, (seconds, ratios) in results.items():
        cells = [scheme, f"{seconds * 1e3:.1f}", *(f"{ratios[r]:.3f}×" for r in references)]
        say("| " + " | ".join(cells) + " |" if markdown else "  ".join(f"{c:>10}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--schemes", help="comma-separated specs (default: see above)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"training step (forward, loss, backward, SGD step), batch {args.batch} at "
        f"{args.size}px on {device} ({args.threads} thread(s)), {args.rounds} rounds, "
        f"{args.clock} clock, torch {torch.__version__}"
    )
    for name in args.models.split(","):
        schemes = args.schemes.split(",") if args.schemes else MODEL_SCHEMES.get(name, SCHEMES)
        results = measure(
            name, schemes, args.batch, args.size, device, args.rounds, CLOCKS[args.clock]
        )
        report(name, results, args.markdown)


if __name__ == "__main__":
    main()
