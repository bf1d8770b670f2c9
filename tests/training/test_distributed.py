"""Distributed training: SyncBatchNorm and DDP steps on 2 gloo processes against one process on the
concatenated batch, conversion, and the helpers of normlab.training.distributed."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import normlab
from normlab.data import TrainBatches
from normlab.data.loaders import ShardSampler
from normlab.layers import BatchNorm, EvoNormB0, NormAct, SyncBatchNorm, VarianceNorm
from normlab.training import distributed
from normlab.training.distributed import DistInfo

from . import cases, workers

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is needed",
)

# -- 2 processes under torchrun ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of 2 gloo processes computed (tests/training/torchrun_script.py), launched once
    with ``python -m torch.distributed.run --nproc_per_node=2``."""
    return workers.run_torchrun(tmp_path_factory.mktemp("torchrun"))


@pytest.fixture(scope="module")
def layer_results(ranks):
    return [r["layer"] for r in ranks]


@pytest.fixture(scope="module")
def ddp_results(ranks):
    return [r["ddp"] for r in ranks]


def _close(actual, expected, tol: float) -> None:
    """Equal to ``tol`` relative to the largest magnitude of ``expected``."""
    scale = max(float(expected.abs().max()), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tol * scale)


@pytest.mark.parametrize("case", cases.LAYER_CASES, ids=lambda c: c.name)
def test_sync_batch_norm_is_batch_norm_on_concatenated_batch(layer_results, case):
    """Outputs, input gradients, running statistics and eval outputs equal BatchNorm's on the
    concatenated batch; the parameter gradients (local sums) add up to BatchNorm's."""
    exact = case.dtype == torch.float64
    reference = cases.run_layer(
        cases.make_layer(case, sync=False).double(), case, None, dtype=torch.float64
    )
    ranks = [result[case.name] for result in layer_results]
    tol = 1e-6 if exact else 1e-4  # float32: F.batch_norm is off by 4e-5 here
    for step in range(case.steps):
        for key in ("y", "grad_x"):
            actual = torch.cat([r[key][step] for r in ranks]).double()
            _close(actual, reference[key][step], tol)
    _close(torch.cat([r["eval_y"] for r in ranks]).double(), reference["eval_y"], tol)
    for name, grad in reference["grads"].items():
        _close(sum(r["grads"][name] for r in ranks).double(), grad, tol)
    for rank in ranks:
        for name, buffer in reference["buffers"].items():
            _close(rank["buffers"][name].to(buffer.dtype), buffer, 1e-6 if exact else 1e-5)


def test_sync_batch_norm_differs_from_per_process_batch_norm(layer_results):
    """The comparison can fail: per-shard BatchNorm gives other outputs than the global one."""
    case = cases.LAYER_CASES[0]
    rank0 = layer_results[0][case.name]
    local = cases.run_layer(cases.make_layer(case, sync=False), case, cases.shard_of(case, 0))
    assert (local["y"][0] - rank0["y"][0]).abs().max() > 1e-2


def test_sync_batch_norm_refuses_a_global_batch_of_one_value_on_every_rank(layer_results):
    for result in layer_results:
        assert "over the process group" in result["one value"]
        assert "hold 1 in all" in result["one value"]


# -- one DDP step on resnet20 ---------------------------------------------------------------------


def _relative_difference(grads: dict, reference: dict) -> float:
    return max(
        float((grads[n] - g).norm() / g.norm().clamp_min(1e-30)) for n, g in reference.items()
    )


@pytest.mark.parametrize("norm", ["gn8+pn", "ln+pn", "bn+sync", "bn+pn+sync"])
def test_ddp_step_equals_one_process_on_concatenated_batch(ddp_results, norm):
    """DDP's averaged gradients of the per-rank mean loss (equal shares) are the gradients of the
    mean loss over the concatenated batch, to 1e-6 relative; so are the running statistics."""
    reference = cases.reference_step(norm)
    for result in ddp_results:
        for name, grad in reference["grads"].items():
            _close(result[norm]["grads"][name], grad, 1e-6)
        for name, buffer in reference["buffers"].items():
            _close(result[norm]["buffers"][name], buffer, 1e-6)


def test_ddp_step_with_per_process_batch_norm_differs(ddp_results):
    reference = cases.reference_step("bn")
    for result in ddp_results:
        assert _relative_difference(result["bn"]["grads"], reference["grads"]) > 1e-2
    synced = _relative_difference(ddp_results[0]["bn+sync"]["grads"], reference["grads"])
    assert synced < 1e-9


@pytest.mark.parametrize("norm", cases.TRAIN_NORMS)
def test_sgd_steps_under_ddp_equal_one_process(ranks, norm):
    """A few SGD steps (momentum, weight decay) leave every rank with the parameters and running
    statistics of one process trained on the concatenated batches."""
    reference = cases.train_steps(cases.make_model(norm), 0, 1)
    for rank in ranks:
        for name, value in reference.items():
            _close(rank["train"][norm][name], value, 1e-6)


# -- SyncBatchNorm and its conversion in one process ----------------------------------------------


def test_sync_batch_norm_without_process_group_is_batch_norm():
    torch.manual_seed(0)
    sync, plain = SyncBatchNorm(3), BatchNorm(3)
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    outputs = []
    for layer in (sync, plain):
        layer.double()
        y = layer(x)
        (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
        outputs.append((y, x.grad.clone(), layer.weight.grad, layer.running_var))
        x.grad = None
    for a, b in zip(*outputs, strict=True):
        assert torch.equal(a, b)
    assert not sync.synchronizes


def test_from_batch_norm_shares_parameters_and_buffers():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.3)
    bn(torch.randn(5, 4, 2, 2))
    sync = SyncBatchNorm.from_batch_norm(bn.eval())
    assert sync.weight is bn.weight
    assert sync.running_var is bn.running_var
    assert (sync.eps, sync.momentum, sync.training) == (1e-3, 0.3, False)
    x = torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(sync(x), bn(x))


@pytest.mark.parametrize("norm", ["bn", "bn+pn"])
def test_convert_sync_batchnorm_replaces_every_batch_norm(norm):
    model = normlab.models.create("resnet20", norm=norm, width=0.25)
    keys = list(model.state_dict())
    x = torch.randn(4, 3, 16, 16)
    expected = model(x)
    converted = distributed.convert_sync_batchnorm(model)
    assert converted is model
    kinds = {type(m) for m in model.modules()}
    assert SyncBatchNorm in kinds
    assert BatchNorm not in kinds
    assert all(isinstance(m.norm, SyncBatchNorm) for m in model.modules() if isinstance(m, NormAct))
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), expected)


def test_convert_sync_batchnorm_takes_torch_batch_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    distributed.convert_sync_batchnorm(model)
    assert [type(m) for m in model] == [nn.Conv2d, SyncBatchNorm, nn.ReLU, SyncBatchNorm]
    root = distributed.convert_sync_batchnorm(nn.BatchNorm1d(3))
    assert isinstance(root, SyncBatchNorm)


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (lambda: normlab.models.create("resnet20", norm="bn/4", width=0.25), "norm_batch_size=4"),
        (lambda: nn.Sequential(VarianceNorm(3)), "0 (VarianceNorm)"),
        (lambda: nn.Sequential(nn.BatchNorm2d(3), EvoNormB0(3)), "1 (EvoNormB0)"),
    ],
)
def test_convert_sync_batchnorm_refuses_what_it_cannot_synchronise(model, named):
    with pytest.raises(ValueError, match="per-process statistics") as error:
        distributed.convert_sync_batchnorm(model())
    assert named in str(error.value)


# -- setup and the helpers in one process ---------------------------------------------------------


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def test_setup_without_torchrun_is_one_process(no_torchrun):
    info = distributed.setup("cpu")
    assert info == DistInfo(0, 1, 0, torch.device("cpu"), None)
    assert info.is_main
    assert not info.distributed
    assert not torch.distributed.is_initialized()
    model = nn.Linear(2, 2)
    assert distributed.wrap(model, info) is model
    assert distributed.all_reduce_sum({"loss": 2.5, "n": 3}, info) == {"loss": 2.5, "n": 3.0}
    total = distributed.all_reduce_sum(torch.tensor([1, 2]), info)
    assert total.dtype == torch.float64
    assert total.tolist() == [1.0, 2.0]
    assert distributed.broadcast_object({"epoch": 3}, info) == {"epoch": 3}
    distributed.barrier(info)
    distributed.cleanup(info)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_setup_refuses_cuda_without_cuda(no_torchrun):
    with pytest.raises(ValueError, match="CUDA is not available"):
        distributed.setup("cuda")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "cpu", "backend": "nccl"}, "'nccl' needs CUDA"),
        ({"device": "cpu", "backend": "mpi"}, "unknown backend 'mpi'; valid choices: gloo, nccl"),
        ({"device": "gpu"}, "unknown device 'gpu'"),
    ],
)
def test_setup_refuses_bad_devices_and_backends(no_torchrun, kwargs, message):
    with pytest.raises(ValueError, match=message):
        distributed.setup(**kwargs)


def test_setup_under_torchrun_refuses_nccl_on_cpu(monkeypatch):
    for name, value in workers.torchrun_environment(0, 2, workers.free_port()).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="'nccl' needs CUDA"):
        distributed.setup("cpu", backend="nccl")
    assert not torch.distributed.is_initialized()


def test_setup_names_the_missing_torchrun_variables(monkeypatch, no_torchrun):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT not"):
        distributed.setup("cpu")


def test_shard_sampler_covers_each_index_once():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(7))
    assert [len(s) for s in shards] == [3, 2, 2]
    with pytest.raises(ValueError, match="rank must be in"):
        ShardSampler(7, 3, 3)


def test_evaluation_batches_repeat_no_sample_across_ranks():
    shards = [
        TrainBatches("gaussian:1x2x2", "test", 2, train=False, limit=7, rank=r, world_size=3)
        for r in range(3)
    ]
    indices = [i for shard in shards for i in shard.indices(0)]
    assert sorted(indices) == list(range(7))
    assert sum(shard.num_samples for shard in shards) == 7


def test_all_reduce_sum_refuses_other_types():
    with pytest.raises(TypeError, match="dict of names to numbers or a tensor"):
        distributed.all_reduce_sum([1.0], DistInfo())


# -- the helpers under torchrun -------------------------------------------------------------------


def test_helpers_under_torchrun(ranks):
    """setup from torchrun's environment, all_reduce_sum, broadcast_object, the samplers, wrap and
    barrier on 2 processes."""
    results = [r["helpers"] for r in ranks]
    for rank, result in enumerate(results):
        assert result["info"] == (rank, 2, rank, "cpu", "gloo")
        assert result["is_main"] == (rank == 0)
        assert result["distributed"]
        assert result["sums"] == {"count": 30.0, "loss": 4.0}
        assert result["tensor_sum"].dtype == torch.float64
        assert result["tensor_sum"].tolist() == [1.0, 2.0]
        assert result["decision"] == {"epoch": 7}
        assert result["wrapped"] == DistributedDataParallel.__name__
        assert result["saw_rank0_file"]
    for epoch in (0, 1):
        shards = [r["train"][epoch] for r in results]
        assert sorted(shards[0] + shards[1]) == list(range(10))
    assert results[0]["train"][0] != results[0]["train"][1]
    assert [r["eval"] for r in results] == [[0, 2, 4, 6], [1, 3, 5]]
