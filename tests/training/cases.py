"""What the distributed tests compute, on each rank and in one process on the concatenated batch.

Every case draws its global batch from a seed, so that workers (which take their slice) and the
single-process reference (which takes all of it) see the same numbers.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import normlab
from normlab.layers import Act, BatchNorm, NormAct, SyncBatchNorm
from normlab.training import distributed

# -- SyncBatchNorm on its own ---------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCase:
    """A global batch of ``sum(sizes)`` samples split into per-rank shards of ``sizes``."""

    name: str
    sizes: tuple[int, ...]
    tail: tuple[int, ...] = (4, 3, 3)
    dtype: torch.dtype = torch.float64
    offset: float = 0.0
    fused: bool = False
    affine: bool = True
    momentum: float | None = 0.1
    steps: int = 2


def _random_cases(count: int) -> tuple[LayerCase, ...]:
    """Shapes drawn from a fixed seed: per-rank sizes 0..5 (two values at least in all), 1 to 3
    spatial dims of 1 to 3 (or none), 1 to 6 channels."""
    rng = random.Random(0)
    drawn = []
    while len(drawn) < count:
        sizes = (rng.randint(0, 5), rng.randint(0, 5))
        tail = (rng.randint(1, 6), *(rng.randint(1, 3) for _ in range(rng.randint(0, 3))))
        if sum(sizes) * math.prod(tail[1:]) > 1:
            drawn.append(LayerCase(f"random {sizes} {tail}", sizes, tail, steps=1))
    return tuple(drawn)


LAYER_CASES = (
    LayerCase("3+5", (3, 5)),
    LayerCase("0+4", (0, 4)),
    LayerCase("4+0 (N, C) cumulative", (4, 0), tail=(5,), momentum=None),
    LayerCase("3+5 in NormAct", (3, 5), fused=True),
    LayerCase("2+3 without affine", (2, 3), affine=False),
    LayerCase("3+5 float32 about 1000", (3, 5), dtype=torch.float32, offset=1000.0),
    *_random_cases(8),
)


def layer_data(case: LayerCase, step: int) -> tuple[Tensor, Tensor]:
    """The global input x and the loss weights r of ``step`` (loss = Σ y·r)."""
    g = torch.Generator().manual_seed(1000 * step + sum(map(ord, case.name)))
    shape = (sum(case.sizes), *case.tail)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0 + 0.5 + case.offset
    r = torch.randn(shape, generator=g, dtype=torch.float64)
    return x.to(case.dtype), r.to(case.dtype)


def make_layer(case: LayerCase, sync: bool) -> nn.Module:
    """The layer under test, with non-trivial affine parameters drawn from a fixed seed."""
    channels = case.tail[0]
    g = torch.Generator().manual_seed(7)
    weight = 1.0 + 0.5 * torch.randn(channels, generator=g, dtype=torch.float64)
    bias = torch.randn(channels, generator=g, dtype=torch.float64)
    cls = SyncBatchNorm if sync else BatchNorm
    norm = cls(channels, momentum=case.momentum, affine=case.affine and not case.fused)
    if case.fused:
        act = Act(channels, "relu")
        layer: nn.Module = NormAct(norm, act)
        affine = [act.gamma, act.beta]
    else:
        layer, affine = norm, [norm.weight, norm.bias] if case.affine else []
    with torch.no_grad():
        for parameter, value in zip(affine, (weight, bias), strict=False):
            parameter.copy_(value)
    return layer.to(case.dtype)


def run_layer(
    layer: nn.Module, case: LayerCase, shard: slice | None, dtype: torch.dtype | None = None
) -> dict:
    """Train-mode steps on ``shard`` of each step's batch (all of it when None), then one eval
    forward: outputs, input gradients, parameter gradients (summed over steps) and buffers.
    ``dtype`` recasts the data (the case's numbers, computed in another precision)."""
    result: dict = {"y": [], "grad_x": []}
    for step in range(case.steps):
        x, r = layer_data(case, step)
        if shard is not None:
            x, r = x[shard], r[shard]
        if dtype is not None:
            x, r = x.to(dtype), r.to(dtype)
        x = x.clone().requires_grad_(True)
        y = layer(x)
        (y * r).sum().backward()
        result["y"].append(y.detach())
        result["grad_x"].append(x.grad)
    layer.eval()
    x, _ = layer_data(case, case.steps)
    x = x if shard is None else x[shard]
    result["eval_y"] = layer(x if dtype is None else x.to(dtype)).detach()
    result["grads"] = {n: p.grad.clone() for n, p in layer.named_parameters()}
    result["buffers"] = {n: b.clone() for n, b in layer.named_buffers()}
    return result


def shard_of(case: LayerCase, rank: int) -> slice:
    start = sum(case.sizes[:rank])
    return slice(start, start + case.sizes[rank])


def layer_worker(info: distributed.DistInfo) -> dict:
    """Every :data:`LAYER_CASES` on this rank's shard, and the error of a global batch of one."""
    results = {
        case.name: run_layer(make_layer(case, sync=True), case, shard_of(case, info.rank))
        for case in LAYER_CASES
    }
    layer = SyncBatchNorm(3)
    try:
        layer(torch.randn(1 - info.rank, 3))
    except ValueError as error:
        results["one value"] = str(error)
    return results


# -- one DDP step on a zoo model ------------------------------------------------------------------

MODEL_NORMS = ("gn8+pn", "ln+pn", "bn", "bn+sync", "bn+pn+sync")
GLOBAL_BATCH = 8


def make_model(norm: str) -> nn.Module:
    torch.manual_seed(0)
    spec = norm.removesuffix("+sync")
    model = normlab.models.create("resnet20", norm=spec, width=0.5).double()
    if norm.endswith("+sync"):
        model = distributed.convert_sync_batchnorm(model)
    return model


def model_data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)
    return x, labels


def model_step(model: nn.Module, shard: slice) -> dict:
    """One forward/backward with the mean cross-entropy over ``shard`` of the global batch."""
    x, labels = model_data()
    F.cross_entropy(model(x[shard]), labels[shard]).backward()
    inner = distributed.unwrap(model)
    return {
        "grads": {n: p.grad.clone() for n, p in inner.named_parameters()},
        "buffers": {n: b.clone() for n, b in inner.named_buffers() if b.is_floating_point()},
    }


def ddp_worker(info: distributed.DistInfo) -> dict:
    """One DDP step per norm on this rank's equal share of the global batch."""
    share = GLOBAL_BATCH // info.world_size
    shard = slice(info.rank * share, (info.rank + 1) * share)
    return {
        norm: model_step(distributed.wrap(make_model(norm), info), shard) for norm in MODEL_NORMS
    }


def reference_step(norm: str) -> dict:
    """The same step in one process on the concatenated batch (plain BatchNorm for bn+sync: with
    one process, normlab's SyncBatchNorm is BatchNorm)."""
    return model_step(make_model(norm), slice(None))


# -- a few SGD steps ------------------------------------------------------------------------------

TRAIN_NORMS = ("ln+pn", "bn+sync")
TRAIN_STEPS = 3


def train_steps(model: nn.Module, rank: int, world_size: int) -> dict:
    """SGD with momentum for :data:`TRAIN_STEPS` steps, each on a new global batch of which this
    process takes its equal share; the parameters and buffers at the end."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    share = GLOBAL_BATCH // world_size
    shard = slice(rank * share, (rank + 1) * share)
    g = torch.Generator().manual_seed(11)
    for _ in range(TRAIN_STEPS):
        x = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x[shard]), labels[shard]).backward()
        optimizer.step()
    inner = distributed.unwrap(model)
    state = inner.state_dict()
    return {n: t.clone() for n, t in state.items() if t.is_floating_point()}


def train_worker(info: distributed.DistInfo) -> dict:
    return {
        norm: train_steps(distributed.wrap(make_model(norm), info), info.rank, info.world_size)
        for norm in TRAIN_NORMS
    }
