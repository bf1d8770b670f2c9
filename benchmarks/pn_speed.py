"""Forward+backward time of Proxy Normalization against its natural baselines, in one process.

For NCHW activation shapes of CIFAR ResNets (batch 128) and ImageNet ResNet-50 (batch 32) it
times, per shape, one forward and backward pass (input, parameters) of, with φ = relu unless
``--act`` says otherwise:

* ``BN+ReLU``   torch eager nn.BatchNorm2d + nn.ReLU
* ``GN+ReLU``   torch eager nn.GroupNorm + nn.ReLU            <- the baseline of the ratios
* ``GN+Act``    normlab scheme("gnG").norm_act(C)             (γ, β folded into GroupNorm)
* ``GN+PN``     normlab scheme("gnG+pn").norm_act(C)          (as a user runs it by default: the
                                                              C++ node on CPU, NORMLAB_COMPILED=0
                                                              for the Python one)
* ``naive PN``  eager GN, affine, φ, and the mean/var of a 200-point proxy grid per call

Then, as users run them, whole zoo models (ResNet-20 on CIFAR batches of 128, ResNet-50 on
ImageNet batches of 8): forward, sum and backward of the model built with ``bn``, ``gnG`` and
``gnG+pn`` (G = 8, 32), ratios to ``gnG``, whose normalization step runs the same kernels as
GN+ReLU.

Candidates run interleaved, round after round, and each one's median over the rounds is
reported, so that drifts of the machine (frequency, other processes) hit all of them alike.

    python benchmarks/pn_speed.py [--quick] [--act gelu] [--device cuda] [--markdown] [--no-models]

``--pairs`` times instead, for every normalizer (gn, ln, bn) and φ (relu, silu, gelu, tanh), PN
after the normalizer against torch's eager normalizer + φ, and prints per pair the geometric mean
and worst ratio over the shapes (``--norms``, ``--acts`` choose).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

import normlab
from normlab import models
from normlab.layers import compiled
from normlab.layers.activations import TORCH_ACTIVATIONS
from normlab.layers.proxy_moments import reference_quantiles

CIFAR = [(128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8)]
IMAGENET = [
    (32, 64, 56, 56),
    (32, 256, 56, 56),
    (32, 128, 28, 28),
    (32, 512, 28, 28),
    (32, 256, 14, 14),
    (32, 1024, 14, 14),
    (32, 512, 7, 7),
    (32, 2048, 7, 7),
]
# model, input shape, GN groups
MODELS = [("resnet20", (128, 3, 32, 32), 8), ("resnet50", (8, 3, 224, 224), 32)]


class NaivePN(nn.Module):
    """PN as written in eager code: GN without affine, then (φ(γy+β) - E)/sqrt(Var+ε) with
    E, Var the mean and biased variance of φ(γ·q_i + β) over 200 proxy quantiles q_i."""

    def __init__(self, channels: int, groups: int, act: str, eps: float = 0.03) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, affine=False)
        self.act = TORCH_ACTIVATIONS[act]()
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(channels, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        z = self.act(self.gamma * self.norm(x) + self.beta)
        q = reference_quantiles(200, x.dtype, x.device)
        proxy = self.act(self.gamma.view(-1, 1) * q + self.beta.view(-1, 1))
        var, mean = torch.var_mean(proxy, dim=1, correction=0)
        return (z - mean.view(-1, 1, 1)) / torch.sqrt(var.view(-1, 1, 1) + self.eps)


def candidates(channels: int, groups: int, act: str) -> dict[str, nn.Module]:
    """The compared layers; the second, torch's GN + φ, is the baseline of the ratios."""
    label = TORCH_ACTIVATIONS[act]().__class__.__name__
    return {
        f"BN+{label}": nn.Sequential(nn.BatchNorm2d(channels), TORCH_ACTIVATIONS[act]()),
        f"GN+{label}": nn.Sequential(nn.GroupNorm(groups, channels), TORCH_ACTIVATIONS[act]()),
        "GN+Act": normlab.scheme(f"gn{groups}", act=act).norm_act(channels),
        "GN+PN": normlab.scheme(f"gn{groups}+pn", act=act).norm_act(channels),
        "naive PN": NaivePN(channels, groups, act),
    }


NORMS = ("gn", "ln", "bn")
PAIR_ACTS = ("relu", "silu", "gelu", "tanh")


def torch_norm(norm: str, channels: int, groups: int) -> nn.Module:
    """torch's eager layer for a normlab normalizer name (LN over (C, H, W) is GroupNorm(1))."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(groups if norm == "gn" else 1, channels)


def pair(norm: str, channels: int, groups: int, act: str) -> dict[str, nn.Module]:
    """torch eager norm + φ (the baseline) and normlab's norm + PN with φ."""
    spec = f"gn{groups}" if norm == "gn" else norm
    return {
        "plain": nn.Sequential(torch_norm(norm, channels, groups), TORCH_ACTIVATIONS[act]()),
        "PN": normlab.scheme(f"{spec}+pn", act=act).norm_act(channels),
    }


def groups_for(shape: tuple[int, ...]) -> int:
    return 8 if shape[1] <= 64 and shape[0] >= 128 else 32


def measure_pairs(
    shapes: list[tuple[int, ...]],
    norms: list[str],
    acts: list[str],
    device: torch.device,
    rounds: int,
) -> dict[tuple[str, str], list[float]]:
    """PN / plain time ratio (medians of interleaved rounds) per (norm, φ), one per shape."""
    ratios: dict[tuple[str, str], list[float]] = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for shape in shapes:
        x = torch.randn(shape, generator=gen).to(device).requires_grad_()
        grad = torch.randn(shape, generator=gen).to(device)
        for norm in norms:
            for act in acts:
                modules = pair(norm, shape[1], groups_for(shape), act)
                times = interleaved(modules, x, grad, rounds, warmup=2)
                ratios.setdefault((norm, act), []).append(times["PN"] / times["plain"])
    return ratios


def report_pairs(
    shapes: list[tuple[int, ...]], ratios: dict[tuple[str, str], list[float]], say: Callable
) -> None:
    """One markdown row per (norm, φ): geometric mean and worst ratio, and every shape's."""
    say("| norm + φ | geomean | worst | " + " | ".join(str(s) for s in shapes) + " |")
    say("|---" * (len(shapes) + 3) + "|")
    for (norm, act), values in ratios.items():
        cells = " | ".join(f"{v:.2f}" for v in values)
        geo = statistics.geometric_mean(values)
        say(f"| {norm}+{act} | {geo:.3f}× | {max(values):.3f}× | {cells} |")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# wall time, or the process's CPU time (with one thread: what the step itself costs, robust
# against other processes on a shared machine)
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]
# each candidate's summary over the rounds: the median, or the minimum (the cost without the
# machine's interference: page faults of fresh allocations, memory reclaim, other processes)
STATISTICS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}
_statistic = STATISTICS["median"]


def time_step(module: nn.Module, x: Tensor, grad: Tensor) -> float:
    """Seconds for one forward and backward pass."""
    _synchronize(x.device)
    start = _clock()
    module(x).backward(grad)
    _synchronize(x.device)
    elapsed = _clock() - start
    if x.requires_grad:
        x.grad = None
    module.zero_grad(set_to_none=True)
    return elapsed


def measure(
    shape: tuple[int, ...], act: str, device: torch.device, rounds: int, warmup: int
) -> dict[str, float]:
    """Median seconds per forward+backward of every candidate layer, interleaved."""
    channels = shape[1]
    groups = 8 if channels <= 64 and shape[0] >= 128 else 32
    modules = candidates(channels, groups, act)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(device)
    return interleaved(modules, x, grad, rounds, warmup)


def measure_model(
    name: str, shape: tuple[int, ...], groups: int, device: torch.device, rounds: int, warmup: int
) -> dict[str, float]:
    """Median seconds per forward+backward of the model under bn, gnG and gnG+pn, interleaved."""
    specs = ["bn", f"gn{groups}", f"gn{groups}+pn"]
    modules = {spec: models.create(name, norm=spec).to(device) for spec in specs}
    x = torch.randn(shape, generator=torch.Generator(device="cpu").manual_seed(0)).to(device)
    with torch.no_grad():
        logits = modules[specs[0]](x)
    return interleaved(modules, x, torch.ones_like(logits), rounds, warmup)


def interleaved(
    modules: dict[str, nn.Module], x: Tensor, grad: Tensor, rounds: int, warmup: int
) -> dict[str, float]:
    """Median seconds per forward+backward of each module, run round after round in turn."""
    modules = {name: m.to(x.device) for name, m in modules.items()}
    times: dict[str, list[float]] = {name: [] for name in modules}
    for step in range(warmup + rounds):
        for name, module in modules.items():
            elapsed = time_step(module, x, grad)
            if step >= warmup:
                times[name].append(elapsed)
    return {name: _statistic(values) for name, values in times.items()}


def stabilise_allocator() -> None:
    """Keep freed buffers in glibc's heap instead of returning them to the OS, so that each
    large allocation does not fault fresh pages in (optional, Linux/glibc only)."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 40)


def report(
    results: list[tuple[tuple[int, ...], dict[str, float]]], markdown: bool, say: Callable
) -> None:
    names = list(results[0][1])
    if markdown:
        say("| shape (N, C, H, W) | " + " | ".join(f"{n} ms (×)" for n in names) + " |")
        say("|---" * (len(names) + 1) + "|")
    else:
        say(f"{'shape (N, C, H, W)':22s}" + "".join(f"{n:>18s}" for n in names))
    ratios = []
    for shape, times in results:
        base = times[names[1]]
        ratios.append(times["GN+PN"] / base)
        cells = [f"{times[n] * 1e3:.2f} ({times[n] / base:.2f}×)" for n in names]
        if markdown:
            say(f"| {shape} | " + " | ".join(cells) + " |")
        else:
            say(f"{shape!s:22s}" + "".join(f"{c:>18s}" for c in cells))
    geo = statistics.geometric_mean(ratios)
    say(f"\nGN+PN / {names[1]}: geometric mean {geo:.3f}×, max {max(ratios):.3f}×")


def report_models(
    results: list[tuple[str, tuple[int, ...], dict[str, float]]], markdown: bool, say: Callable
) -> None:
    if markdown:
        say("| model | input | bn ms (×) | gnG ms (×) | gnG+pn ms (×) |\n|---|---|---|---|---|")
    for name, shape, times in results:
        bn, gn, pn = times.values()
        cells = [f"{t * 1e3:.1f} ({t / gn:.3f}×)" for t in (bn, gn, pn)]
        if markdown:
            say(f"| {name} | {shape} | " + " | ".join(cells) + " |")
        else:
            say(
                f"{name:10s} {shape!s:18s} bn {cells[0]:>18s}  gnG {cells[1]:>18s}  "
                f"gnG+pn {cells[2]:>18s}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and rounds")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per shape")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument(
        "--stable-malloc", action="store_true", help="tune glibc malloc to avoid page faults"
    )
    parser.add_argument("--no-models", action="store_true", help="skip the whole-model table")
    parser.add_argument("--act", default="relu", choices=sorted(TORCH_ACTIVATIONS), help="φ (relu)")
    parser.add_argument(
        "--pairs",
        action="store_true",
        help="instead: PN / (torch eager norm + φ) for every --norms × --acts, per shape",
    )
    parser.add_argument("--norms", default=",".join(NORMS), help="with --pairs (gn,ln,bn)")
    parser.add_argument("--acts", default=",".join(PAIR_ACTS), help="with --pairs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="cpu: the process's CPU time (with --threads 1)",
    )
    parser.add_argument(
        "--stat", choices=list(STATISTICS), default="median", help="summary over the rounds"
    )
    args = parser.parse_args()
    global _clock, _statistic
    _clock, _statistic = CLOCKS[args.clock], STATISTICS[args.stat]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stable_malloc:
        stabilise_allocator()
    device = torch.device(args.device)
    shapes = CIFAR + IMAGENET
    if args.quick:
        shapes = [CIFAR[0], CIFAR[2], IMAGENET[0], IMAGENET[6]]
    rounds = args.rounds or (10 if args.quick else 30)
    if args.pairs:
        print(
            f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {rounds} "
            f"rounds; PN / (torch eager norm + φ), forward + backward, {args.stat}s"
        )
        norms, acts = args.norms.split(","), args.acts.split(",")
        report_pairs(shapes, measure_pairs(shapes, norms, acts, device, rounds), print)
        return
    node = "C++" if device.type == "cpu" and compiled.kernels() is not None else "Python"
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
        f"{rounds} rounds, median fwd+bwd time, φ = {args.act}, ratios to torch's GN + φ; "
        f"relu GN+PN node: {node}"
    )
    results = [(shape, measure(shape, args.act, device, rounds, warmup=3)) for shape in shapes]
    report(results, args.markdown, print)
    if args.no_models:
        return
    print("\nWhole models, forward + backward, ratios to gnG:")
    zoo = MODELS[:1] if args.quick else MODELS
    model_rounds = 3 if args.quick else 10
    model_results = [
        (name, shape, measure_model(name, shape, groups, device, model_rounds, warmup=1))
        for name, shape, groups in zoo
    ]
    report_models(model_results, args.markdown, print)


if __name__ == "__main__":
    main()
