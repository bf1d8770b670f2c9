"""Several ``python -m normlab`` command lines in one subprocess, to pay torch's import (about
3 s of CPU) once rather than once per command line.

The subprocess is a fresh interpreter that runs, for each command line in turn, the real console
entry the way ``python -m normlab`` does: ``runpy.run_module("normlab", run_name="__main__",
alter_sys=True)`` executes ``normlab/__main__.py`` anew, with a fresh ``sys.argv``, in the command
line's own working folder, with file descriptors 1 and 2 redirected to files of its own (so that
output written below Python, by C++ or a child process, is caught too). The exit code is the one
the interpreter would exit with: ``SystemExit``'s code (None is 0; any other object is printed on
stderr and gives 1), and an escaping exception prints its traceback on stderr and gives 1. The
warnings' "once" registries are cleared before each command line, so a warning shows up in every
command line that raises it, as it would in a process of its own.

What a batch cannot see is whatever a command line leaves behind in the interpreter (imported
modules, caches) for the next; the tests that use it keep a few command lines in real processes
of their own (see ``tests/robustness/test_console.py`` and ``tests/test_cli.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"

DRIVER = r"""
import json, os, runpy, sys, tempfile, traceback, warnings

results_path = sys.argv[1]
probes = json.loads(sys.stdin.read())
results = []
for argv, cwd in probes:
    os.chdir(cwd)
    sys.argv = ["-m", *argv]  # run_module puts __main__.py's path first, as python -m does
    warnings.onceregistry.clear()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            with warnings.catch_warnings():  # a fresh per-module registry for each command line
                try:
                    runpy.run_module("normlab", run_name="__main__", alter_sys=True)
                    code = 0
                except SystemExit as exit:
                    code = exit.code
                    if code is None:
                        code = 0
                    elif not isinstance(code, int):
                        print(code, file=sys.stderr)
                        code = 1
                except BaseException:
                    traceback.print_exc()
                    code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        text = [stream.read().decode(errors="replace") for stream in (out, err)]
        results.append([code, *text])
with open(results_path, "w", encoding="utf-8") as file:
    json.dump(results, file)
"""


def run_console_batch(
    probes: Sequence[tuple[Sequence[str], Path]], results: Path, timeout: float = 600
) -> list[subprocess.CompletedProcess]:
    """Run each ``(argv, cwd)`` of ``probes`` as ``python -m normlab ARGV`` in ``cwd``, all in one
    subprocess (see the module's docstring); ``results`` is a file the subprocess writes. One
    ``CompletedProcess`` per probe, in order."""
    env = os.environ | {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    payload = json.dumps([[list(argv), str(cwd)] for argv, cwd in probes])
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER, str(results)],
        input=payload, capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip
    assert driver.returncode == 0, driver.stderr  # the driver itself, not a command line, failed
    return [
        subprocess.CompletedProcess(["normlab", *argv], code, out, err)
        for (argv, _), (code, out, err) in zip(
            probes, json.loads(results.read_text(encoding="utf-8")), strict=True
        )
    ]
