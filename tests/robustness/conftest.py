"""The robustness suite (issue 12): every mistake a clear error, no result silently wrong, no file
half-written. Each test here is one probe (a parametrized case counts once); the terminal summary
prints their count per area and ``ROBUSTNESS_COUNT`` (an environment variable naming a file)
records it as JSON."""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

HERE = Path(__file__).parent
_counts: Counter[str] = Counter()


def pytest_collection_modifyitems(session, config, items):
    """Count the probes per area; run the console probes last in the package's block, so that
    their subprocesses, started with its first probe, run while its other probes do."""
    ours = [i for i, item in enumerate(items) if Path(str(item.fspath)).parent == HERE]
    if ours and ours == list(range(ours[0], ours[-1] + 1)):  # the package's block, reordered
        block = sorted(items[ours[0] : ours[-1] + 1], key=_is_console)
        items[ours[0] : ours[-1] + 1] = block
    _counts.clear()
    for item in items:
        path = Path(str(item.fspath))
        if path.parent == HERE and path.name.startswith("test_"):
            _counts[path.stem.removeprefix("test_")] += 1


def _is_console(item) -> bool:
    return Path(str(item.fspath)).name == "test_console.py"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _counts:
        return
    total = sum(_counts.values())
    areas = ", ".join(f"{area} {n}" for area, n in sorted(_counts.items()))
    terminalreporter.write_line(f"robustness probes: {total} ({areas})")
    target = os.environ.get("ROBUSTNESS_COUNT")
    if target:
        Path(target).write_text(json.dumps({"total": total, **_counts}, indent=2) + "\n")


@pytest.fixture(scope="session", autouse=True)
def console_runs(request, tmp_path_factory):
    """The console probes' subprocesses (test_console.py), started with the package's first probe
    (they run while the other probes do; the console probes come last), when that file's probes
    are among the selected tests: one subprocess runs every selected case in turn, and each case
    of FRESH runs again in a process of its own. Maps a case to a function that waits for its
    runs and returns their ``(folder, CompletedProcess)``."""
    selected = {
        item.callspec.params["case"]
        for item in request.session.items
        if Path(str(item.fspath)).name == "test_console.py" and hasattr(item, "callspec")
    }
    if not selected:
        yield {}
        return
    from .test_console import FRESH, SUBPROCESS, run_console, run_console_cases

    cases = [case for case in SUBPROCESS if case in selected]
    batched = {case: tmp_path_factory.mktemp(f"console-{case}") for case in cases}
    results = tmp_path_factory.mktemp("console-batch") / "results.json"
    with ThreadPoolExecutor(2) as pool:
        batch = pool.submit(run_console_cases, batched, results)
        fresh = {}
        for case in cases:
            if case in FRESH:
                folder = tmp_path_factory.mktemp(f"console-fresh-{case}")
                fresh[case] = (folder, pool.submit(run_console, case, folder))

        def runs(case):
            done = [(batched[case], batch.result()[case])]
            if case in fresh:
                done.append((fresh[case][0], fresh[case][1].result()))
            return done

        yield {case: functools.partial(runs, case) for case in cases}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a fresh temporary folder (commands write relative paths)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
