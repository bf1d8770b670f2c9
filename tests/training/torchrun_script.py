"""Run by test_distributed under torchrun: exercise the helpers, write rank<R>.json to argv[1]."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from normlab.training import distributed


def main(out: Path) -> None:
    torch.set_num_threads(1)
    info = distributed.setup("cpu")
    rank = info.rank
    result = {
        "info": [
            info.rank,
            info.world_size,
            info.local_rank,
            str(info.device),
            info.backend,
            info.is_main,
            info.distributed,
        ],
        "sums": distributed.all_reduce_sum({"loss": rank + 1.5, "count": 10 * (rank + 1)}, info),
        "tensor_sum": distributed.all_reduce_sum(torch.tensor([rank, 1]), info).tolist(),
        "decision": distributed.broadcast_object({"epoch": 7} if rank == 0 else None, info),
        "wrapped": type(distributed.wrap(nn.Linear(3, 2), info)).__name__,
    }
    sampler = distributed.train_sampler(list(range(10)), info, seed=3)
    result["train"] = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        result["train"][str(epoch)] = list(sampler)
    result["eval"] = list(distributed.eval_sampler(list(range(7)), info))
    marker = out / "written-by-rank0"
    if info.is_main:
        marker.write_text("checkpoint")
    distributed.barrier(info)
    result["saw_rank0_file"] = marker.exists()
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    distributed.cleanup(info)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
