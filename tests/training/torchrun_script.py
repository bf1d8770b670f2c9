"""Launched by the distributed tests with ``python -m torch.distributed.run``: every rank runs the
helpers of normlab.training.distributed, the SyncBatchNorm cases, one DDP step per norm and a few
SGD steps, and saves the results to ``<argv[1]>/rank<R>.pt``."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from normlab.data import TrainBatches
from normlab.training import distributed
from tests.training import cases


def helpers(info: distributed.DistInfo, out: Path) -> dict:
    rank = info.rank
    result = {
        "info": (info.rank, info.world_size, info.local_rank, str(info.device), info.backend),
        "is_main": info.is_main,
        "distributed": info.distributed,
        "sums": distributed.all_reduce_sum({"loss": rank + 1.5, "count": 10 * (rank + 1)}, info),
        "tensor_sum": distributed.all_reduce_sum(torch.tensor([rank, 1]), info),
        "decision": distributed.broadcast_object({"epoch": 7} if rank == 0 else None, info),
        "wrapped": type(distributed.wrap(nn.Linear(3, 2), info)).__name__,
    }
    shard = {"rank": info.rank, "world_size": info.world_size, "limit": 10, "seed": 3}
    train = TrainBatches("gaussian:1x2x2", "train", 1, train=True, **shard)
    result["train"] = {epoch: train.indices(epoch) for epoch in (0, 1)}
    test = TrainBatches("gaussian:1x2x2", "test", 1, train=False, **(shard | {"limit": 7}))
    result["eval"] = test.indices(0)
    marker = out / "written-by-rank0"
    if info.is_main:
        marker.write_text("checkpoint")
    distributed.barrier(info)
    result["saw_rank0_file"] = marker.exists()
    return result


def main(out: Path) -> None:
    torch.set_num_threads(1)
    info = distributed.setup("cpu", timeout=timedelta(seconds=120))
    try:
        results = {
            "helpers": helpers(info, out),
            "layer": cases.layer_worker(info),
            "ddp": cases.ddp_worker(info),
            "train": cases.train_worker(info),
        }
        torch.save(results, out / f"rank{info.rank}.pt")
    finally:
        distributed.cleanup(info)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
