"""Multi-process test harness: run a function on P processes joined by a gloo group on loopback.

Each worker is launched with torch.multiprocessing's spawn, receives torchrun's environment
variables (so that :func:`normlab.training.distributed.setup` initialises the group as it would
under torchrun) and saves what it computed with ``torch.save`` for the parent to compare.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.multiprocessing as mp

from normlab.training import distributed

TIMEOUT_S = 90.0


def free_port() -> int:
    """A TCP port free on loopback now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
    }


def _entry(rank: int, fn: Callable, world_size: int, port: int, out: str, args: tuple) -> None:
    os.environ.update(torchrun_environment(rank, world_size, port))
    torch.set_num_threads(1)
    info = distributed.setup("cpu", timeout=timedelta(seconds=TIMEOUT_S))
    try:
        torch.save(fn(info, *args), Path(out) / f"rank{rank}.pt")
    finally:
        distributed.cleanup(info)


def run(fn: Callable, out: Path, *args, world_size: int = 2) -> list:
    """Run ``fn(info, *args)`` on ``world_size`` processes; return each rank's result, in order.

    ``fn`` must be a module-level function (spawned processes import it). A worker's exception is
    raised here; workers still running after the timeout are killed."""
    out.mkdir(parents=True, exist_ok=True)
    context = mp.start_processes(
        _entry,
        args=(fn, world_size, free_port(), str(out), args),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"{fn.__name__} on {world_size} processes ran past {TIMEOUT_S} s")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
