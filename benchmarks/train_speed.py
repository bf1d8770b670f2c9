"""Training throughput of ``normlab train`` against a bare loop, and of the schemes against BN.

For each model and scheme it measures, interleaved round after round (medians reported):

* ``harness``  images/s of a training epoch of :func:`normlab.training.train` (data from
               :class:`~normlab.data.TrainBatches` with augmentation, soft targets, metrics,
               the scheduler), read from its ``metrics.jsonl`` (the second epoch, so that
               one-off set-up is not counted; evaluation is excluded);
* ``bare``     images/s of the loop a user would write over the same model: batches already in
               memory, forward, cross entropy, backward, SGD step, zero_grad.

``--clock cpu`` counts this process's CPU time instead of wall time (the harness's
``cpu_seconds``), which a machine shared with other work disturbs much less; with ``--threads 1``
it is the most repeatable measure of the harness's own cost.

Ratios: harness overhead = bare / harness − 1 (target ≤ 3%), the median over rounds of the ratio
measured within each round (harness and bare back to back, their order alternating from round to
round, so that drifts of a shared machine cancel), and each scheme's harness images/s over
BatchNorm's (target for gn8+pn: ≥ 0.95×).

    python benchmarks/train_speed.py [--quick] [--markdown] [--device cpu] [--clock wall|cpu]
                                     [--threads N] [--rounds R] [--models resnet20 resnet50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from normlab.training import TrainConfig, build_model, param_groups, train

# model, input side, batch, steps per epoch
MODELS = [("resnet20", 32, 128, 16), ("resnet50", 64, 16, 8)]
SCHEMES = ["bn", "gn8", "gn8+pn", "ln+pn"]


LINEAR = "linear"  # a linear classifier: the harness's own cost per step dominates its step
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
HARNESS_SECONDS = {"wall": "seconds", "cpu": "cpu_seconds"}


def make_net(model: str, norm: str, side: int, device: str) -> nn.Module:
    if model == LINEAR:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * side * side, 10)).to(device)
    config = TrainConfig(model=model, norm=norm, device=device)
    return build_model(config, num_classes=10, in_channels=3).to(device)


def harness_ips(
    model: str, side: int, batch: int, steps: int, norm: str, device: str, clock: str
) -> float:
    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(
            model="resnet20" if model == LINEAR else model,
            norm=norm,
            data=f"gaussian:3x{side}x{side}",
            batch_size=batch,
            limit=batch * steps,
            test_limit=batch,
            epochs=2,
            lr=0.01,
            device=device,
            progress=False,
            out=str(Path(folder) / "run"),
        )
        train(config, make_net(model, norm, side, device) if model == LINEAR else None)
        rows = (Path(folder) / "run" / "metrics.jsonl").read_text().splitlines()
        last = json.loads(rows[-1])
        return last["train_samples"] / last[HARNESS_SECONDS[clock]]


def bare_ips(
    model: str, side: int, batch: int, steps: int, norm: str, device: str, clock: str
) -> float:
    net = make_net(model, norm, side, device).train()
    optimizer = torch.optim.SGD(param_groups(net, 1e-4), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(batch, 3, side, side, generator=generator).to(device),
            torch.randint(0, 10, (batch,), generator=generator).to(device),
        )
        for _ in range(steps)
    ]

    now = CLOCKS[clock]

    def epoch() -> float:
        started = now()
        for x, y in batches:
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return now() - started

    epoch()  # warm-up, as the harness's first epoch
    return batch * steps / epoch()


def paired(round_: int, *args) -> tuple[float, float]:
    """(harness, bare) images/s, measured back to back, the bare loop first in odd rounds."""
    if round_ % 2:
        bare = bare_ips(*args)
        return harness_ips(*args), bare
    harness = harness_ips(*args)
    return harness, bare_ips(*args)


def measure(
    model: str, side: int, batch: int, steps: int, device: str, rounds: int, clock: str
) -> dict:
    """{scheme: (harness median, bare median, median of the per-round overheads)}."""
    samples: dict[str, dict[str, list[float]]] = {
        s: {"harness": [], "bare": [], "overhead": []} for s in SCHEMES
    }
    for round_ in range(rounds):
        for norm in SCHEMES:
            harness, bare = paired(round_, model, side, batch, steps, norm, device, clock)
            samples[norm]["harness"].append(harness)
            samples[norm]["bare"].append(bare)
            samples[norm]["overhead"].append(bare / harness - 1)
    return {norm: tuple(statistics.median(v[k]) for k in v) for norm, v in samples.items()}


def harness_cost(side: int, batch: int, steps: int, device: str, rounds: int, clock: str):
    """(harness, bare) milliseconds per step with a linear classifier, medians over rounds:
    their difference is the harness's own work per step (data, augmentation, soft targets,
    metrics, scheduler), measured where it is not lost in the model's noise."""
    harness, bare = [], []
    for round_ in range(rounds):
        h, b = paired(round_, LINEAR, side, batch, steps, "bn", device, clock)
        harness.append(1000 * batch / h)
        bare.append(1000 * batch / b)
    return statistics.median(harness), statistics.median(bare)


def report_cost(cost: tuple[float, float], batch: int, results: dict, say=print) -> None:
    """The harness's own cost per step against each scheme's bare step time."""
    harness, bare = cost
    say(
        f"harness's own work: {harness:.2f} ms/step with a linear model vs {bare:.2f} ms bare "
        f"= {harness - bare:.2f} ms per step of {batch}"
    )
    for norm, (_, bare_ips_, _) in results.items():
        step = 1000 * batch / bare_ips_
        say(f"  {norm}: {100 * (harness - bare) / step:+.2f}% of its {step:.0f} ms step")


def report(model: str, side: int, batch: int, results: dict, markdown: bool, say=print) -> None:
    header = ["scheme", "harness img/s", "bare img/s", "harness overhead", "vs bn (harness)"]
    rows = []
    bn = results["bn"][0]
    for norm, (harness, bare, overhead) in results.items():
        rows.append(
            [norm, f"{harness:.1f}", f"{bare:.1f}", f"{100 * overhead:+.1f}%",
             f"{harness / bn:.2f}×"]
        )  # fmt: skip
    say(f"\n{model}, batch {batch} of 3×{side}×{side}")
    if markdown:
        say("| " + " | ".join(header) + " |")
        say("|" + "---|" * len(header))
        for row in rows:
            say("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        say("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for row in rows:
            say("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-20 only, one round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--models", nargs="+", choices=[m[0] for m in MODELS], help="only these models"
    )
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="wall or CPU time")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = parser.parse_args()
    models = MODELS[:1] if args.quick else MODELS
    models = [m for m in models if not args.models or m[0] in args.models]
    rounds = 1 if args.quick else args.rounds
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{args.clock} clock, {rounds} rounds"
    )
    for model, side, batch, steps in models:
        results = measure(model, side, batch, steps, args.device, rounds, args.clock)
        report(model, side, batch, results, args.markdown)
        cost = harness_cost(side, batch, 4 * steps, args.device, max(rounds, 3), args.clock)
        report_cost(cost, batch, results)


if __name__ == "__main__":
    main()
