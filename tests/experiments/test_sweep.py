"""Sweeps on submitit's local executor, for real: parallel jobs, finished runs skipped, a killed
sweep resumed, a failed run recorded while the others go on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from normlab.experiments import expand, run_sweep
from normlab.training.checkpoint import load_checkpoint

TINY = {
    "model": "resnet20", "width": 0.5, "data": "gaussian:3x8x8", "limit": 32, "test_limit": 16,
    "batch_size": 16, "epochs": 1,
}  # fmt: skip


def _summary(run_folder: str) -> dict:
    return json.loads((Path(run_folder) / "summary.json").read_text())


def test_local_sweep_runs_jobs_in_parallel_and_skips_finished_runs(tmp_path):
    spec = {"base": TINY | {"epochs": 2, "limit": 64}, "grid": {"norm": ["bn", "gn8+pn"]}}
    folder, runs = expand(spec, tmp_path / "sweep")
    events: list[str] = []
    entries = run_sweep(folder, runs, "local", max_parallel=2, on_event=events.append)
    assert [e["status"] for e in entries] == ["finished", "finished"]
    # both jobs were in flight at once: each started before the other ended (their job logs)
    times = {}
    for log in (folder / ".submitit").rglob("*_log.out"):
        for line in log.read_text().splitlines():
            if line.startswith("normlab job: "):
                _, _, what, out, _, at = line.split(" ")
                times[(what, out)] = float(at)
    starts = [times[("start", r.config.out)] for r in runs]
    ends = [times[("end", r.config.out)] for r in runs]
    assert max(starts) < min(ends)
    assert sum(e.startswith("start") for e in events) == 2
    assert json.loads((folder / "sweep.json").read_text())[0]["status"] == "finished"
    before = [(Path(r.config.out) / "last.pt").stat().st_mtime_ns for r in runs]
    again: list[str] = []
    run_sweep(folder, runs, "local", max_parallel=2, on_event=again.append)
    assert again == [f"skip   {r.name} (finished)" for r in runs]
    assert [(Path(r.config.out) / "last.pt").stat().st_mtime_ns for r in runs] == before


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    spec = {"base": TINY, "cases": [{}, {"limit": 8}]}  # 8 samples: no batch of 16 to train on
    folder, runs = expand(spec, tmp_path / "sweep")
    events: list[str] = []
    entries = run_sweep(folder, runs, "local", max_parallel=1, on_event=events.append)
    assert sorted(e["status"] for e in entries) == ["failed", "finished"]
    failed = next(r for r in runs if r.config.limit == 8)
    assert "fewer than batch_size 16" in _summary(failed.config.out)["error"]
    assert any(e.startswith("failed") and "fewer than batch_size" in e for e in events)


def test_a_killed_sweep_resumes_its_unfinished_runs(tmp_path):
    grid = tmp_path / "grid.yaml"
    spec = {"out": str(tmp_path / "sweep"), "base": TINY | {"epochs": 3, "limit": 64},
            "grid": {"seed": [0, 1]}}  # fmt: skip
    grid.write_text(yaml.safe_dump(spec))
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parents[2] / "src"),
    }
    command = [sys.executable, "-m", "normlab", "sweep", str(grid), "--max-parallel", "1"]
    process = subprocess.Popen(command, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _, runs = expand(spec)
    first = Path(runs[0].config.out)
    deadline = time.monotonic() + 180
    while not (first / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its jobs, as a lost allocation
    process.wait()
    time.sleep(0.5)
    assert not (first / "summary.json").exists()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resume {runs[0].name}" in result.stdout
    for run in runs:
        assert _summary(run.config.out)["status"] == "finished"
        rows = (Path(run.config.out) / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["epoch"] for r in rows] == [0, 1, 2]
        assert load_checkpoint(Path(run.config.out) / "last.pt")["epoch"] == 2


def test_dry_run_lists_the_runs_and_starts_nothing(tmp_path, capsys):
    from normlab.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"out": str(tmp_path / "s"), "base": TINY,
                                    "grid": {"norm": ["bn", "ln+pn"]}}))  # fmt: skip
    assert main(["sweep", str(grid), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 runs" in out
    assert "norm-ln+pn_" in out
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [([], "give a grid file or --preset"), (["--preset", "nope", "--data", "x"], "unknown preset")],
)
def test_sweep_cli_errors(args, message, capsys):
    from normlab.cli import main

    assert main(["sweep", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_data_folder_fails_the_sweep_before_any_job(tmp_path):
    from normlab.training.config import ConfigError

    spec = {"base": {"data": f"fashion-mnist:{tmp_path / 'nowhere'}"}, "grid": {"seed": [0, 1]}}
    folder, runs = expand(spec, tmp_path / "sweep")
    with pytest.raises(ConfigError, match=r"nowhere.*does not exist"):
        run_sweep(folder, runs)
    assert not (folder / ".submitit").exists()
    assert not any(folder.glob("*/config.yaml"))
