"""Training throughput of ``normlab train`` against a bare loop, and of the schemes against BN.

For each model and scheme it measures, interleaved round after round (medians reported):

* ``harness``  images/s of a training epoch of :func:`normlab.training.train` (data from
               :class:`~normlab.data.TrainBatches` with augmentation, soft targets, metrics,
               the scheduler), read from its ``metrics.jsonl`` (the second epoch, so that
               one-off set-up is not counted; evaluation is excluded);
* ``bare``     images/s of the loop a user would write over the same model: batches already in
               memory, forward, cross entropy, backward, SGD step, zero_grad.

Ratios: harness overhead = bare / harness − 1 (target ≤ 3%), and each scheme's harness images/s
over BatchNorm's (target for gn8+pn: ≥ 0.95×).

    python benchmarks/train_speed.py [--quick] [--markdown] [--device cpu]
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

from normlab.training import TrainConfig, build_model, param_groups, train

# model, input side, batch, steps per epoch
MODELS = [("resnet20", 32, 128, 8), ("resnet50", 64, 16, 6)]
SCHEMES = ["bn", "gn8", "gn8+pn", "ln+pn"]


def harness_ips(model: str, side: int, batch: int, steps: int, norm: str, device: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(
            model=model,
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
        train(config)
        rows = (Path(folder) / "run" / "metrics.jsonl").read_text().splitlines()
        return json.loads(rows[-1])["images_per_second"]


def bare_ips(model: str, side: int, batch: int, steps: int, norm: str, device: str) -> float:
    config = TrainConfig(model=model, norm=norm, device=device)
    net = build_model(config, num_classes=10, in_channels=3).to(device).train()
    optimizer = torch.optim.SGD(param_groups(net, 1e-4), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(batch, 3, side, side, generator=generator).to(device),
            torch.randint(0, 10, (batch,), generator=generator).to(device),
        )
        for _ in range(steps)
    ]

    def epoch() -> float:
        started = time.perf_counter()
        for x, y in batches:
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    epoch()  # warm-up, as the harness's first epoch
    return batch * steps / epoch()


def measure(model: str, side: int, batch: int, steps: int, device: str, rounds: int) -> dict:
    """{scheme: (harness median, bare median)} images/s."""
    samples: dict[str, dict[str, list[float]]] = {s: {"harness": [], "bare": []} for s in SCHEMES}
    for _ in range(rounds):
        for norm in SCHEMES:
            samples[norm]["harness"].append(harness_ips(model, side, batch, steps, norm, device))
            samples[norm]["bare"].append(bare_ips(model, side, batch, steps, norm, device))
    return {
        norm: (statistics.median(v["harness"]), statistics.median(v["bare"]))
        for norm, v in samples.items()
    }


def report(model: str, side: int, batch: int, results: dict, markdown: bool, say=print) -> None:
    header = ["scheme", "harness img/s", "bare img/s", "harness overhead", "vs bn (harness)"]
    rows = []
    bn = results["bn"][0]
    for norm, (harness, bare) in results.items():
        rows.append(
            [norm, f"{harness:.1f}", f"{bare:.1f}", f"{100 * (bare / harness - 1):+.1f}%",
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
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = parser.parse_args()
    models = MODELS[:1] if args.quick else MODELS
    rounds = 1 if args.quick else args.rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    for model, side, batch, steps in models:
        results = measure(model, side, batch, steps, args.device, rounds)
        report(model, side, batch, results, args.markdown)


if __name__ == "__main__":
    main()
