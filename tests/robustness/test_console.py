"""The real console entry, ``python -m normlab``, in subprocesses: exit code 2, exactly one line
on stderr (naming the command, the argument and the valid range or choices), no traceback, and
nothing written. The cases are the in-process table's (tests/robustness/test_cli.py); they start
in the background when the session starts (see conftest.py), since each pays torch's import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_cli import CASES, assert_one_line, make_files

SRC = Path(__file__).parents[2] / "src"
SUBPROCESS = [
    "no-command", "unknown-command", "schemes-bogus-flag", "demo-width-0", "demo-width-nan",
    "demo-depth-huge", "demo-device-meta", "demo-device-bogus", "demo-out-file",
    "analyze-no-model", "analyze-model", "analyze-width-inf", "analyze-device",
    "analyze-shape", "analyze-bad-checkpoint", "models-name", "models-norm", "train-lr-nan",
    "train-width", "train-model", "train-device-meta", "train-config-list",
    "train-resume-garbage", "train-big-batch", "sweep-nothing", "sweep-list", "table-empty",
    "reproduce-nothing", "reproduce-name", "plot-missing",
]  # fmt: skip


def run_console(case: str, folder: Path) -> subprocess.CompletedProcess:
    make_files(folder)
    env = os.environ | {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "normlab", *CASES[case][0]],
        capture_output=True, text=True, env=env, cwd=folder, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("case", SUBPROCESS)
def test_the_console_entry_reports_one_line_and_exit_2(case, console_runs):
    folder, future = console_runs[case]
    result = future.result()
    argv, fragments = CASES[case]
    assert_one_line(result.returncode, result.stderr, argv, fragments)
    assert sorted(p.name for p in folder.iterdir()) == ["EMPTY", "FILE", "GARBAGE", "LIST", "RUN"]


def test_the_subprocess_probes_are_cases_of_the_table():
    assert set(SUBPROCESS) <= set(CASES)
    assert 30 <= len(SUBPROCESS) <= 40
