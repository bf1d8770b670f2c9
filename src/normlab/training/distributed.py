r"""Data-parallel training on torch.distributed: process group, DDP, reductions, SyncBatchNorm.

``torchrun --nproc_per_node=N -m normlab train ...`` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment. :func:`setup` reads them and
initialises the default process group (gloo on CPU, nccl on CUDA, each process on
``cuda:LOCAL_RANK``); without them it returns a single-process :class:`DistInfo` and every helper
here is the identity. The loop then

* wraps the model with :func:`wrap` (DistributedDataParallel, which averages gradients: with equal
  per-process batches and a per-process mean loss, the gradient of the mean loss over the global
  batch);
* takes its batches from :class:`~normlab.data.TrainBatches` with this process's rank and world
  size (a DistributedSampler for training, a non-repeating shard for evaluation);
* reduces metric *sums* and counts with :func:`all_reduce_sum` before dividing;
* writes (checkpoints, logs) on the main process only (``info.is_main``), with :func:`barrier`
  before other processes read what it wrote, and shares rank 0's decisions with
  :func:`broadcast_object`.

With ``--sync-bn``, :func:`convert_sync_batchnorm` replaces BatchNorm by normlab's
:class:`~normlab.layers.SyncBatchNorm`, whose statistics span every process's shard, on gloo as
on nccl.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .._checks import check_device
from ..layers import BatchNorm, SyncBatchNorm
from ..layers.batch_norm import BatchDependentNorm

BACKENDS = ("gloo", "nccl")
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_TORCH_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world_size`` processes, its rank on this node
    (``local_rank``), its device, and the process group's backend (None when no group was set up).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process: collectives communicate and the model is wrapped in DDP."""
        return self.world_size > 1


# -- the process group ----------------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """Whether torchrun (or an equivalent launcher) set RANK and WORLD_SIZE."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(
    device: str | torch.device | None = None,
    backend: str | None = None,
    timeout: timedelta | None = None,
) -> DistInfo:
    """Initialise the default process group from torchrun's environment, or describe a single
    process when not launched by torchrun.

    Args:
        device: ``"cpu"``, ``"cuda"`` (under torchrun: ``cuda:LOCAL_RANK``), ``"cuda:K"``
            (single process only), or None for CUDA when available, else the CPU.
        backend: ``"gloo"`` or ``"nccl"``; None for nccl on CUDA and gloo on the CPU.
        timeout: how long collectives wait for every process (torch's default when None).

    A group that is already initialised (by the caller) is used as it is.
    """
    if not launched_by_torchrun() and not dist.is_initialized():
        if backend is not None:
            _check_backend(backend, _resolve_device(device, 0, False))
        return DistInfo(device=_resolve_device(device, 0, False))
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        resolved = _resolve_device(device, local_rank, world > 1)
        return DistInfo(rank, world, local_rank, resolved, dist.get_backend())
    missing = [name for name in _TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"RANK and WORLD_SIZE are set but {', '.join(missing)} not: launch with torchrun "
            f"(torchrun --nproc_per_node=N -m normlab ...), which sets "
            f"{', '.join(_TORCHRUN_VARIABLES)}"
        )
    rank, world, local_rank = (_env_int(n) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    resolved = _resolve_device(device, local_rank, True)
    backend = _check_backend(backend or _default_backend(resolved), resolved)
    kwargs: dict[str, Any] = {"rank": rank, "world_size": world}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
        if backend == "nccl":
            kwargs["device_id"] = resolved
    dist.init_process_group(backend, init_method="env://", **kwargs)
    return DistInfo(rank, world, local_rank, resolved, backend)


def cleanup(info: DistInfo) -> None:
    """Destroy the default process group set up for ``info`` (nothing for a single process)."""
    if info.backend is not None and dist.is_initialized():
        dist.destroy_process_group()


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def _resolve_device(device: str | torch.device | None, local_rank: int, several: bool):
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {device!r}; valid choices: 'cpu', 'cuda', 'cuda:K'"
        ) from None
    if resolved.type == "cpu":
        return torch.device("cpu")
    if resolved.type != "cuda":
        if several:
            raise ValueError(
                f"distributed training runs on 'cpu' (gloo) or 'cuda' (nccl), got device {device!r}"
            )
        return check_device(device)  # mps where available; never meta
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but CUDA is not available "
            f"(torch.cuda.is_available() is False); valid choices here: 'cpu'"
        )
    if several:
        if resolved.index is not None and resolved.index != local_rank:
            raise ValueError(
                f"under torchrun give device 'cuda' (each process takes cuda:LOCAL_RANK), not "
                f"{device!r}: this process has LOCAL_RANK={local_rank}"
            )
        index = local_rank
    else:
        index = torch.cuda.current_device() if resolved.index is None else resolved.index
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"device cuda:{index} requested but only {torch.cuda.device_count()} CUDA "
            f"device(s) are visible"
        )
    return torch.device("cuda", index)


def _default_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _check_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid choices: {', '.join(BACKENDS)}")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(
            f"backend 'nccl' needs CUDA devices, but the device is {str(device)!r}; use "
            f"backend 'gloo' on the CPU"
        )
    if not getattr(dist, f"is_{backend}_available")():
        raise ValueError(f"backend {backend!r} is not available in this build of torch")
    return backend


# -- the model ------------------------------------------------------------------------------------


def wrap(model: nn.Module, info: DistInfo, **ddp_kwargs: Any) -> nn.Module:
    """``model`` moved to ``info.device``, in DistributedDataParallel when several processes run
    (``device_ids`` set on CUDA); the model itself otherwise. DDP broadcasts rank 0's parameters
    and buffers here, so every process starts from the same state. ``ddp_kwargs`` go to DDP."""
    model = model.to(info.device)
    if not info.distributed:
        return model
    if info.device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [info.device.index])
        ddp_kwargs.setdefault("output_device", info.device.index)
    return DistributedDataParallel(model, **ddp_kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (for checkpoints and evaluation), or ``model`` itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """Replace every BatchNorm in ``model`` by normlab's :class:`~normlab.layers.SyncBatchNorm`,
    in place, and return the model (the new layer when ``model`` is itself a BatchNorm).

    normlab's BatchNorm, alone or as the normalization step of a NormAct, and torch's
    BatchNorm1d/2d/3d and SyncBatchNorm become SyncBatchNorm with the same parameters and buffers
    (the same tensors). Call it before :func:`wrap`, and build the optimizer afterwards. Other
    batch-dependent layers (VarianceNorm, EvoNorm-B0) and ghost-batch BatchNorm cannot be
    synchronised and are refused, naming them.
    """
    refused = [
        f"{name or '<model>'} ({_describe(module)})"
        for name, module in model.named_modules()
        if _unsynchronisable(module)
    ]
    if refused:
        raise ValueError(
            f"sync BatchNorm synchronises BatchNorm over whole batches only; these layers would "
            f"keep per-process statistics: {', '.join(refused)}. Train without sync BatchNorm, "
            f"or use 'bn' (no ghost batches)"
        )
    return _convert(model, process_group)


def _convert(module: nn.Module, process_group) -> nn.Module:
    if _is_batch_norm(module):
        return SyncBatchNorm.from_batch_norm(module, process_group)
    for name, child in module.named_children():
        replacement = _convert(child, process_group)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def _is_batch_norm(module: nn.Module) -> bool:
    if isinstance(module, SyncBatchNorm):
        return False
    return type(module) is BatchNorm or isinstance(module, _TORCH_BATCH_NORMS)


def _unsynchronisable(module: nn.Module) -> bool:
    if isinstance(module, SyncBatchNorm):
        return False
    if isinstance(module, BatchNorm):
        return type(module) is not BatchNorm or module.norm_batch_size is not None
    return isinstance(module, BatchDependentNorm)


def _describe(module: nn.Module) -> str:
    size = getattr(module, "norm_batch_size", None)
    return type(module).__name__ + (f" with norm_batch_size={size}" if size else "")


# -- the data -------------------------------------------------------------------------------------


# -- collectives ----------------------------------------------------------------------------------


def all_reduce_sum(values: Mapping[str, float] | Tensor, info: DistInfo):
    """The sum over processes of metric sums, in float64.

    A mapping of names to numbers (or 0-d tensors) gives a dict of floats; every process must
    pass the same names. A tensor gives a new float64 tensor on the tensor's device (moved to
    ``info.device`` for the reduction). With one process, the values themselves (as float64).
    """
    if isinstance(values, Tensor):
        total = values.detach().to(device=info.device, dtype=torch.float64, copy=True)
        if info.distributed:
            dist.all_reduce(total)
        return total.to(values.device)
    if not isinstance(values, Mapping):
        raise TypeError(
            f"all_reduce_sum takes a dict of names to numbers or a tensor, got "
            f"{type(values).__name__}"
        )
    names = sorted(values)
    numbers = [float(values[name]) for name in names]
    total = torch.tensor(numbers, dtype=torch.float64, device=info.device)
    if info.distributed and names:
        dist.all_reduce(total)
    return dict(zip(names, total.tolist(), strict=True))


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Process ``src``'s ``obj`` (picklable) on every process, e.g. rank 0's resume decision."""
    if not info.distributed:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=_collective_device(info))
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait until every process gets here (e.g. after rank 0 writes a checkpoint)."""
    if not info.distributed:
        return
    if info.backend == "nccl":
        dist.barrier(device_ids=[info.device.index])
    else:
        dist.barrier()


def _collective_device(info: DistInfo) -> torch.device | None:
    return info.device if info.backend == "nccl" else None
