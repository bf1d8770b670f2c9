"""A non-finite input to a batch-statistics normalizer is refused before it poisons the running
statistics: a ValueError naming the layer (and, in a zoo model, its qualified name) and counting
the NaN and inf values, with running_mean, running_var and num_batches_tracked unchanged. So are a
variance that overflows and running statistics that were non-finite already.

Turned off (``normlab.set_finite_checks(False)``) the layer runs, and its running statistics
are NaN: what the check prevents. Under a tracer (here: fake tensors, as torch.compile and
torch.export run them) nothing is read back from the data.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch._subclasses.fake_tensor import FakeTensorMode

import normlab
from normlab import models, scheme
from normlab.layers import BatchNorm, EvoNormB0, SyncBatchNorm, VarianceNorm

C = 3

# name -> a batch-statistics normalizer (alone or inside a NormAct) in training mode
BATCH_LAYERS = {
    "BatchNorm": lambda: BatchNorm(C),
    "BatchNorm-ghost": lambda: BatchNorm(C, norm_batch_size=2),
    "BatchNorm-ghost-remainder": lambda: BatchNorm(C, norm_batch_size=3),
    "BatchNorm-cumulative": lambda: BatchNorm(C, momentum=None),
    "SyncBatchNorm": lambda: SyncBatchNorm(C),
    "VarianceNorm": lambda: VarianceNorm(C),
    "EvoNormB0": lambda: EvoNormB0(C),
    "EvoNormB0-linear": lambda: EvoNormB0(C, nonlinear=False),
    "NormAct-bn": lambda: scheme("bn").norm_act(C),
    "NormAct-bn/2+pn": lambda: scheme("bn/2+pn").norm_act(C),
    "NormAct-vn+pn": lambda: scheme("vn+pn").norm_act(C),
    "NormAct-evo-b0": lambda: scheme("evo-b0").norm_act(C),
}


def _norm(layer: torch.nn.Module) -> torch.nn.Module:
    return getattr(layer, "norm", layer)


def _buffers(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in _norm(layer).named_buffers()}


def _poisoned(values: tuple[float, ...] = (float("nan"), float("inf"))) -> torch.Tensor:
    x = torch.randn(4, C, 5, 5, generator=torch.Generator().manual_seed(0))
    for index, value in enumerate(values):
        x[index, index % C, 1, index] = value
    return x


@contextlib.contextmanager
def finite_checks(enabled: bool):
    previous = normlab.set_finite_checks(enabled)
    try:
        yield
    finally:
        normlab.set_finite_checks(previous)


@pytest.mark.parametrize("name", list(BATCH_LAYERS))
@pytest.mark.parametrize(
    ("values", "count"),
    [((float("nan"),), "1 of 300"), ((float("nan"), float("inf"), -float("inf")), "3 of 300")],
    ids=["nan", "nan-inf"],
)
def test_non_finite_input_raises_before_running_stats_change(name, values, count):
    layer = BATCH_LAYERS[name]()
    layer(torch.randn(4, C, 5, 5))  # one good batch: the running statistics move
    before = _buffers(layer)
    with pytest.raises(normlab.NonFiniteError, match="non-finite input") as info:
        layer(_poisoned(values))
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert type(_norm(layer)).__name__ in message
    assert count in message
    assert "set_finite_checks(False)" in message
    after = _buffers(layer)
    assert after.keys() == before.keys()
    for key, buffer in before.items():
        assert torch.equal(after[key], buffer), key
    assert int(after["num_batches_tracked"]) == 1


@pytest.mark.parametrize("name", list(BATCH_LAYERS))
def test_evaluation_with_running_stats_keeps_a_nan_in_its_sample(name):
    layer = BATCH_LAYERS[name]()
    layer(torch.randn(4, C, 5, 5))
    before = _buffers(layer.eval())
    out = layer(_poisoned())
    assert bool(torch.isfinite(out[2:]).all())  # the other samples
    for key, buffer in before.items():
        assert torch.equal(_buffers(layer)[key], buffer)


def test_batch_statistics_in_evaluation_are_checked_too():
    """Without running statistics, evaluation normalizes with the batch's: a NaN would spread
    to every sample."""
    layer = BatchNorm(C, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="BatchNorm got a non-finite input: 2 of 300"):
        layer(_poisoned())


@pytest.mark.parametrize("name", ["BatchNorm", "VarianceNorm", "EvoNormB0", "NormAct-bn"])
def test_turned_off_the_running_stats_are_poisoned(name):
    layer = BATCH_LAYERS[name]()
    with finite_checks(False):
        layer(_poisoned())
    assert not bool(torch.isfinite(_norm(layer).running_var).all())


def test_finite_inputs_and_empty_batches_pass():
    layer = BatchNorm(C)
    huge = torch.full((4, C, 2, 2), 3e38)  # finite, though its sum overflows float32
    layer(huge)
    layer(torch.empty(0, C, 5, 5))
    assert int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize("name", ["BatchNorm", "BatchNorm-ghost", "VarianceNorm", "EvoNormB0"])
def test_a_variance_that_overflows_is_refused(name):
    layer = BATCH_LAYERS[name]()
    x = torch.full((4, C, 2, 2), 3e38)
    x[::2] = -3e38  # finite values whose variance, 9e76, overflows float32
    before = _buffers(layer)
    with pytest.raises(ValueError, match="batch statistics overflow float32 although its input"):
        layer(x)
    for key, buffer in before.items():
        assert torch.equal(_buffers(layer)[key], buffer)


def test_running_stats_already_non_finite_are_reported_as_such():
    layer = BatchNorm(C)
    layer.running_var[1] = float("nan")  # as loaded from a poisoned checkpoint
    before = _buffers(layer)
    with pytest.raises(ValueError, match="running statistics were already non-finite") as info:
        layer(torch.randn(4, C, 5, 5))
    assert "reset_running_stats()" in str(info.value)
    after = _buffers(layer)
    for key, buffer in before.items():
        torch.testing.assert_close(after[key], buffer, rtol=0, atol=0, equal_nan=True)
    layer.reset_running_stats()
    layer(torch.randn(4, C, 5, 5))


def test_a_zoo_model_names_the_layer():
    model = models.create("resnet20", norm="bn", width=0.25)
    x = torch.randn(2, 3, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"BatchNorm 'layer1\.0\.norm_act1\.norm' got a non-fin"):
        model(x)
    assert int(model.layer1[0].norm_act1.norm.num_batches_tracked) == 0


def test_fake_tensors_read_nothing_back():
    """Under fake tensors (what torch.compile and torch.export trace with) the check is skipped:
    a fake tensor has no values to read."""
    layer = BatchNorm(C)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        out = layer(mode.from_tensor(_poisoned()))
    assert out.shape == (4, C, 5, 5)


# -- SyncBatchNorm on 2 gloo processes ------------------------------------------------------


def _sync_worker(rank: int, store: str, results: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),  # a process left waiting fails, not hangs
    )
    try:
        layer = SyncBatchNorm(C)
        layer(torch.randn(4, C, 5, 5))
        before = _buffers(layer)
        x = torch.randn(4, C, 5, 5)
        if rank == 1:
            x[0, 0, 0, :2] = float("nan")
        try:
            layer(x)
            message = None
        except ValueError as error:
            message = str(error)
        unchanged = all(torch.equal(b, _buffers(layer)[k]) for k, b in before.items())
        layer(torch.randn(4, C, 5, 5))  # both processes go on in step
        torch.save({"message": message, "unchanged": unchanged}, f"{results}{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_sync_batch_norm_raises_on_every_process():
    """One process's NaN makes every process raise (none is left waiting in a collective),
    after the gather and before the running statistics move."""
    with tempfile.TemporaryDirectory() as tmp:
        store, results = os.path.join(tmp, "store"), os.path.join(tmp, "rank")
        mp.spawn(_sync_worker, args=(store, results), nprocs=2, join=True)
        ranks = [torch.load(f"{results}{r}.pt") for r in range(2)]
    for rank, result in enumerate(ranks):
        message = result["message"]
        assert message is not None
        assert "SyncBatchNorm got a non-finite input on process(es) [1] of the 2" in message
        assert f"this one is rank {rank}" in message
        assert f"holds {2 if rank == 1 else 0} non-finite values of 300" in message
        assert result["unchanged"]
