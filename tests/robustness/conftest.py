"""The robustness suite (issue 12): every mistake a clear error, no result silently wrong, no file
half-written. Each test here is one probe (a parametrized case counts once); the terminal summary
prints their count per area and ``ROBUSTNESS_COUNT`` (an environment variable naming a file)
records it as JSON."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).parent
_counts: Counter[str] = Counter()


def pytest_collection_modifyitems(session, config, items):
    _counts.clear()
    for item in items:
        path = Path(str(item.fspath))
        if path.parent == HERE and path.name.startswith("test_"):
            _counts[path.stem.removeprefix("test_")] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _counts:
        return
    total = sum(_counts.values())
    areas = ", ".join(f"{area} {n}" for area, n in sorted(_counts.items()))
    terminalreporter.write_line(f"robustness probes: {total} ({areas})")
    target = os.environ.get("ROBUSTNESS_COUNT")
    if target:
        Path(target).write_text(json.dumps({"total": total, **_counts}, indent=2) + "\n")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a fresh temporary folder (commands write relative paths)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
