"""GN+φ against GN+PN(φ), eager and under torch.compile (Inductor), and what Inductor makes of them.

Two measurements, per φ in relu, silu, gelu, tanh:

* **Structure.** Each module (normlab ``scheme("gnG", act=φ).norm_act(C)`` and
  ``scheme("gnG+pn", act=φ).norm_act(C)``) is compiled on a probe shape and Inductor's generated
  code is read back (``torch._inductor.utils.run_and_get_code``): the number of kernels it
  generated (``torch._inductor.metrics.generated_kernel_count``), the number of generated kernel
  functions in the forward and the backward graph, and the number of *passes over the full
  N·C·H·W tensor* in each. A pass is a Triton kernel whose iteration space (xnumel · r0_numel)
  is N·C·H·W, or, in Inductor's C++ code for CPU, a loop nest whose trip count (the product of
  its loops' extents, leaf by leaf) is N·C·H·W. "PN's tail is fused into the normalizer's
  epilogue" means GN+PN makes as many passes as GN+φ, forward and backward: the per-channel
  moments (C-sized vectors, and C × nodes for the quadrature) then cost no extra traffic over
  the activations. A third module, torch's GroupNorm, φ and a learnable per-channel affine
  (:class:`TorchAffineAfterAct`), is PN's tail written in plain PyTorch: the reference for
  what Inductor makes of a per-channel affine after φ.
* **Speed.** Forward+backward time (input and parameter gradients) of both modules, eager and
  compiled, on the CIFAR and ImageNet activation shapes of ``benchmarks/pn_speed.py``;
  candidates run interleaved round after round and each one's median is reported, with the
  ratios PN/plain (eager), PN/plain (compiled) and compiled/eager (per module).

    python benchmarks/pn_compile_speed.py [--quick] [--device cuda] [--acts relu,silu]
        [--groups 8] [--rounds N] [--no-timing]

The probe shape (4, 24, 8, 8) has spatial sizes that are multiples of the vector width and an
N·C·H·W (6144) that no per-channel loop nest of the built-in φ reaches (C × 4 × nodes is at
most 24 · 4 · 120 = 11520, C × nodes at most 2880), so the count is unambiguous.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

import normlab
from normlab.layers.activations import TORCH_ACTIVATIONS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pn_speed import CIFAR, IMAGENET, time_step  # the shapes and the timer

QUICK = [CIFAR[0], CIFAR[2], IMAGENET[6]]
ACTS = ("relu", "silu", "gelu", "tanh")
PROBE = (4, 24, 8, 8)

# -- reading Inductor's generated code ------------------------------------------------------

_CPP_KERNEL = re.compile(r"^(cpp_fused\w*) = async_compile\.cpp_pybinding\(", re.M)
_CPP_FOR = re.compile(
    r"for\s*\(\s*int64_t (\w+)\s*=\s*static_cast<int64_t>\((-?\d+)L?\);\s*\1\s*<\s*"
    r"static_cast<int64_t>\((-?\d+)L?\);"
)
_TRITON_KERNEL = re.compile(r"^(triton_\w+) = async_compile\.triton\(", re.M)
_NUMEL = re.compile(r"^\s*(x|y|z|r0_|r1_|r)numel\s*=\s*(\d+)\s*$", re.M)


def _cpp_trip_counts(body: str) -> list[int]:
    """The trip count (in elements) of every innermost loop of a C++ kernel, times the extents
    of the loops around it."""
    depth, stack, pending, leaves = 0, [], None, []
    for line in body.splitlines():
        found = _CPP_FOR.search(line)
        if found:
            pending = int(found.group(3)) - int(found.group(2))
        for char in line:
            if char == "{":
                depth += 1
                if pending is not None:
                    if stack:
                        stack[-1][2] = True  # has an inner loop
                    stack.append([depth, pending, False])
                    pending = None
            elif char == "}":
                if stack and stack[-1][0] == depth:
                    _, extent, has_inner = stack.pop()
                    if not has_inner:
                        leaves.append(extent * math.prod(level[1] for level in stack))
                depth -= 1
    return leaves


def kernel_passes(code: str, numel: int) -> tuple[int, int]:
    """(generated kernel functions, passes over a tensor of ``numel`` elements) in one module of
    Inductor output code: C++ loop nests (CPU) or Triton kernels (GPU)."""
    functions, passes = 0, 0
    for match in _CPP_KERNEL.finditer(code):
        start = code.index("'''", match.end()) + 3
        body = code[start : code.index("'''", start)]
        functions += 1
        passes += sum(count == numel for count in _cpp_trip_counts(body))
    for match in _TRITON_KERNEL.finditer(code):
        start = code.index("'''", match.end()) + 3
        body = code[start : code.index("'''", start)]
        functions += 1
        sizes = [int(value) for _, value in _NUMEL.findall(body[body.find("def ") :])]
        if sizes and math.prod(sizes) == numel:
            passes += 1
    return functions, passes


def structure(module: nn.Module, shape: tuple[int, ...], device: torch.device) -> dict[str, int]:
    """Compile ``module`` afresh, run one forward and backward on ``shape``, and read back
    Inductor's code: kernel count, and (functions, full passes) for forward and backward."""
    from torch._inductor import metrics
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    module = module.to(device)
    x = torch.randn(shape, device=device, requires_grad=True)
    compiled = torch.compile(module, dynamic=False)

    def step() -> None:
        out = compiled(x)
        out.backward(torch.ones_like(out))

    metrics.reset()
    _, codes = run_and_get_code(step)
    numel = math.prod(shape)
    found = [kernel_passes(code, numel) for code in codes]
    if len(found) != 2:
        raise RuntimeError(f"expected a forward and a backward graph, Inductor made {len(found)}")
    (fwd_functions, fwd_passes), (bwd_functions, bwd_passes) = found
    return {
        "kernels": metrics.generated_kernel_count,
        "fwd functions": fwd_functions,
        "fwd passes": fwd_passes,
        "bwd functions": bwd_functions,
        "bwd passes": bwd_passes,
    }


class TorchAffineAfterAct(nn.Module):
    """torch's GroupNorm, φ, then a learnable per-channel affine φ(GN(x))·a_c + c_c: PN's tail
    in plain PyTorch, the fusion reference of the structure table (what Inductor makes of any
    per-channel affine after φ, whatever computes a and c)."""

    def __init__(self, channels: int, groups: int, act: str) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.act = TORCH_ACTIVATIONS[act]()
        self.scale = nn.Parameter(torch.ones(channels) + 0.1 * torch.arange(channels) / channels)
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return self.act(self.norm(x)) * self.scale.view(view) + self.shift.view(view)


# -- timing ---------------------------------------------------------------------------------


def modules(channels: int, groups: int, act: str) -> dict[str, nn.Module]:
    """GN+φ and GN+PN(φ), normlab's modules, PN's parameters away from their initial values
    (as after some training; the moments' cost does not depend on them)."""
    plain = normlab.scheme(f"gn{groups}", act=act).norm_act(channels)
    pn = normlab.scheme(f"gn{groups}+pn", act=act).norm_act(channels)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pn.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return {"plain": plain, "pn": pn}


def measure(
    shape: tuple[int, ...], act: str, groups: int, device: torch.device, rounds: int, warmup: int
) -> dict[str, float]:
    """Median seconds per forward+backward of plain and PN, eager and compiled, interleaved."""
    base = {name: m.to(device) for name, m in modules(shape[1], groups, act).items()}
    candidates = {f"{name} eager": m for name, m in base.items()}
    candidates |= {f"{name} compiled": torch.compile(m, dynamic=False) for name, m in base.items()}
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(device)
    for module in candidates.values():  # compile outside the timed rounds
        time_step(module, x, grad)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for step in range(warmup + rounds):
        for name, module in candidates.items():
            elapsed = time_step(module, x, grad)
            if step >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def report_times(results: list[tuple[str, tuple[int, ...], dict[str, float]]], say) -> None:
    say(
        "| φ | shape (N, C, H, W) | GN+φ eager ms | GN+PN eager ms | GN+φ compiled ms "
        "| GN+PN compiled ms | PN/plain eager | PN/plain compiled | compiled/eager plain "
        "| compiled/eager PN |"
    )
    say("|---" * 10 + "|")
    for act, shape, t in results:
        pe, qe, pc, qc = (
            t[k] for k in ("plain eager", "pn eager", "plain compiled", "pn compiled")
        )
        say(
            f"| {act} | {shape} | {pe * 1e3:.2f} | {qe * 1e3:.2f} | {pc * 1e3:.2f} | "
            f"{qc * 1e3:.2f} | {qe / pe:.2f}× | {qc / pc:.2f}× | {pc / pe:.2f}× | {qc / qe:.2f}× |"
        )
    for act in dict.fromkeys(a for a, _, _ in results):
        rows = [t for a, _, t in results if a == act]
        eager = statistics.geometric_mean([t["pn eager"] / t["plain eager"] for t in rows])
        comp = statistics.geometric_mean([t["pn compiled"] / t["plain compiled"] for t in rows])
        say(f"\n{act}: PN/plain geometric mean {eager:.2f}× eager, {comp:.2f}× compiled")


def report_structure(rows: list[tuple[str, str, dict[str, int]]], say) -> None:
    say(
        "| φ | module | Inductor kernels | fwd functions | fwd full passes | bwd functions "
        "| bwd full passes |"
    )
    say("|---" * 7 + "|")
    for act, name, s in rows:
        say(
            f"| {act} | {name} | {s['kernels']} | {s['fwd functions']} | {s['fwd passes']} | "
            f"{s['bwd functions']} | {s['bwd passes']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 shapes, fewer rounds")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.add_argument("--acts", default=",".join(ACTS), help="comma-separated φ")
    parser.add_argument("--groups", type=int, default=8, help="GroupNorm groups (8)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per shape")
    parser.add_argument("--no-timing", action="store_true", help="kernel structure only")
    parser.add_argument("--no-structure", action="store_true", help="timing only")
    args = parser.parse_args()
    device = torch.device(args.device)
    acts = [a.strip() for a in args.acts.split(",") if a.strip()]
    shapes = QUICK if args.quick else CIFAR + IMAGENET
    rounds = args.rounds or (7 if args.quick else 20)
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, GN groups "
        f"{args.groups}; fwd+bwd, medians of {rounds} interleaved rounds"
    )
    if not args.no_structure:
        print(f"\nInductor's code on the probe shape {PROBE} (full pass = N·C·H·W elements):\n")
        rows = []
        for act in acts:
            found = modules(PROBE[1], args.groups, act)
            found["torch"] = TorchAffineAfterAct(PROBE[1], args.groups, act)
            labels = {"plain": f"GN+{act}", "pn": f"GN+PN({act})", "torch": f"torch GN+{act}·a+c"}
            for name, module in found.items():
                rows.append((act, labels[name], structure(module, PROBE, device)))
        report_structure(rows, print)
    if args.no_timing:
        return
    print()
    results = []
    for act in acts:
        for shape in shapes:
            torch._dynamo.reset()
            results.append((act, shape, measure(shape, act, args.groups, device, rounds, 2)))
    report_times(results, print)


if __name__ == "__main__":
    main()
