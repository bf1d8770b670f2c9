"""Multi-process test harness: ``python -m torch.distributed.run`` on loopback, gloo, 2 processes.

The launched script (:mod:`tests.training.torchrun_script`) saves what each rank computed with
``torch.save``; :func:`run_torchrun` returns it for the test to compare with one process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

import normlab

TIMEOUT_S = 180
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    """A TCP port free on loopback now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun gives each process, for ``rank`` of ``world_size`` on loopback."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def run_torchrun(out: Path, nproc: int = 2) -> list:
    """Run torchrun_script.py on ``nproc`` processes (one thread each); return each rank's
    results, in rank order. A failed run raises with the end of its output."""
    src = Path(normlab.__file__).resolve().parents[1]
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(src), str(root)]))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(Path(__file__).with_name("torchrun_script.py")),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
