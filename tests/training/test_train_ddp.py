"""``torchrun -m normlab train`` with 2 processes on loopback (gloo): one run folder written by
rank 0, metrics over both shards, resume under DDP, --sync-bn."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from normlab.training.checkpoint import load_checkpoint

FLAGS = [
    "--model", "resnet20", "--width", "0.5", "--data", "gaussian:3x8x8", "--limit", "64",
    "--test-limit", "32", "--batch-size", "8", "--no-progress",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        "-m", "normlab", "train", *FLAGS, *args,
    ]  # fmt: skip
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parents[2] / "src"),
    }
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(
    "extra",
    [["--norm", "gn8+pn"], pytest.param(["--norm", "bn", "--sync-bn"], marks=pytest.mark.slow)],
)
def test_two_processes_train_one_run_and_resume(tmp_path, extra):
    out = tmp_path / "run"
    first = torchrun("--epochs", "1", "--out", str(out), *extra)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # written once, by rank 0
    assert rows[0]["train_samples"] == 64  # both shards of 32 counted
    resumed = torchrun("--epochs", "2", "--out", str(out), "--resume", *extra)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["epochs"] == 2
