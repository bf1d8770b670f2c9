"""The real console entry, ``python -m normlab``: exit code 2, exactly one line on stderr (naming
the command, the argument and the valid range or choices), no traceback, and nothing written. The
cases are the in-process table's (tests/robustness/test_cli.py). Each pays torch's import in a
process of its own for a few cases (FRESH); the others run together in one subprocess that
executes the same entry (``normlab/__main__.py``) once per case (tests/console_batch.py). Both
start in the background when the session starts (see conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..console_batch import run_console_batch
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
# the cases that also run in an interpreter of their own: an error of the parser and one of a
# command (main's error boundary), each exiting the real process
FRESH = ["no-command", "train-resume-garbage"]


def run_console(case: str, folder: Path) -> subprocess.CompletedProcess:
    """``python -m normlab`` on the case's arguments, in a process of its own, in ``folder``."""
    make_files(folder)
    env = os.environ | {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "normlab", *CASES[case][0]],
        capture_output=True, text=True, env=env, cwd=folder, timeout=300, check=False,
    )  # fmt: skip


def run_console_cases(
    cases: dict[str, Path], results: Path
) -> dict[str, subprocess.CompletedProcess]:
    """Every case in its folder, all in one subprocess (tests/console_batch.py)."""
    for folder in cases.values():
        make_files(folder)
    done = run_console_batch([(CASES[case][0], folder) for case, folder in cases.items()], results)
    return dict(zip(cases, done, strict=True))


@pytest.mark.parametrize("case", SUBPROCESS)
def test_the_console_entry_reports_one_line_and_exit_2(case, console_runs):
    argv, fragments = CASES[case]
    for folder, result in console_runs[case]():  # the batch's run, and the fresh one if FRESH
        assert_one_line(result.returncode, result.stderr, argv, fragments)
        left = sorted(p.name for p in folder.iterdir())
        assert left == ["EMPTY", "FILE", "GARBAGE", "LIST", "RUN"], left
        assert (folder / "RUN" / "last.pt").read_bytes() == b"\x00garbage" * 10


def test_the_subprocess_probes_are_cases_of_the_table():
    assert set(SUBPROCESS) <= set(CASES)
    assert set(FRESH) <= set(SUBPROCESS)
    assert 30 <= len(SUBPROCESS) <= 40
