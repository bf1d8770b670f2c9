"""write_report: report.html with every check (failures marked) and figures as relative files;
metrics.json strict JSON with the checks list beside the analyses' data."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from normlab.diagnostics import power_decomposition
from normlab.report import Check, Section, Table, save_figure, to_jsonable, write_report


def small_figure() -> Figure:
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    return fig


def checks() -> list[Check]:
    return [
        Check.at_most("BN's P1/P is ~0 at every layer", 1e-9, 1e-6),
        Check.at_least("LN collapses: P1/P at layer 10 <is> large & 'quoted'", 0.2, 0.5),
        Check.close("IN's P3 = 1 (Theorem 2)", 0.9999, 1.0, 1e-3),
        Check.at_most("a NaN never passes", math.nan, 1.0),
        Check("custom claim", [1.0, 2.0], "increasing", True),
    ]


def test_report_files(tmp_path):
    external = save_figure(small_figure(), tmp_path / "elsewhere" / "spp")[0]
    sections = [
        Section("Power decomposition", "First paragraph.\n\nSecond <b>paragraph</b>.",
                figures=[small_figure()], captions=["PN paper, Fig. 2"],
                tables=[Table(["layer", "P1/P"], [["1.norm", 0.01234567], ["3.norm", None]])]),
        Section("Signal propagation", figures=[external]),
    ]  # fmt: skip
    metrics = {
        "power": {"bn": power_decomposition(torch.randn(4, 2, 3, 3))},
        "array": np.array([1.0, np.nan, np.inf]),
        "scalar": np.float32(0.5),
        "tensor": torch.tensor([[1.0, float("nan")]]),
    }
    out = tmp_path / "report"
    files = write_report(out, "normlab <demo>", sections, checks(), metrics)
    assert files.html == out / "report.html"
    assert files.metrics == out / "metrics.json"
    assert all(f.is_file() and out in f.parents for f in files.figures)
    assert {f.suffix for f in files.figures} == {".png", ".svg"}

    payload = json.loads(files.metrics.read_text(), parse_constant=pytest.fail)
    assert payload["title"] == "normlab <demo>"
    assert payload["summary"] == {"checks": 5, "passed": 3, "failed": 2, "all_passed": False}
    for entry, check in zip(payload["checks"], checks(), strict=True):
        assert set(entry) == {"claim", "measured", "expected", "passed"}
        assert entry["claim"] == check.claim
        assert entry["passed"] is check.passed
    assert payload["checks"][3]["measured"] is None
    assert payload["array"] == [1.0, None, None]
    assert payload["scalar"] == 0.5
    assert payload["tensor"] == [[1.0, None]]
    assert set(payload["power"]["bn"]) == {"p1", "p2", "p3", "p4", "count"}

    page = files.html.read_text()
    for check in checks():
        assert _escaped(check.claim) in page
    assert page.count("✗ FAIL") == 2
    assert page.count("✓ pass") == 3
    assert "2 of 5 checks FAILED" in page
    assert page.count('<tr class="fail">') == 2
    assert "Second &lt;b&gt;paragraph&lt;/b&gt;." in page
    assert "0.01235" in page
    assert "n/a" in page
    for figure in files.figures:
        assert f'"{figure.relative_to(out).as_posix()}"' in page
    assert "elsewhere" not in page  # the outside figure was copied in


def _escaped(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#x27;")
    )


def test_all_passed_banner_and_no_checks(tmp_path):
    page = write_report(tmp_path / "a", "ok", checks=[checks()[0]]).html.read_text()
    assert "All 1 checks passed." in page
    assert "FAIL" not in page
    files = write_report(tmp_path / "b", "empty")
    assert "No checks were run." in files.html.read_text()
    assert json.loads(files.metrics.read_text())["checks"] == []


def test_report_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="reserved keys"):
        write_report(tmp_path, "t", metrics={"checks": []})
    with pytest.raises(TypeError, match="Check objects"):
        write_report(tmp_path, "t", checks=[{"claim": "x"}])
    with pytest.raises(ValueError, match="not found"):
        write_report(tmp_path, "t", [Section("s", figures=[tmp_path / "missing.png"])])
    with pytest.raises(TypeError, match="matplotlib Figure"):
        write_report(tmp_path, "t", [Section("s", figures=[42])])


@dataclass
class Point:
    x: float
    tags: tuple[str, ...]


def test_to_jsonable():
    value = {1: Point(float("-inf"), ("a",)), "t": torch.tensor(2.5), "n": np.int64(3)}
    assert to_jsonable(value) == {"1": {"x": None, "tags": ["a"]}, "t": 2.5, "n": 3}
    with pytest.raises(TypeError, match=r"metrics\['f'\] is a Figure"):
        to_jsonable({"f": Figure()})


# -- atomic, self-consistent report folders --------------------------------------------------


def report_files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def first_report(tmp_path):
    """A complete report of two figures in ``tmp_path/report``, and its files."""
    out = tmp_path / "report"
    sections = [Section("One", figures=[small_figure()]), Section("Two", figures=[small_figure()])]
    write_report(out, "first", sections, checks(), {"value": 1})
    return out, report_files(out)


def assert_no_temporaries(tmp_path):
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp-" in p.name or p.name.endswith(".old")]
    assert leftovers == []


def test_a_second_report_replaces_the_first_without_stale_figures(tmp_path):
    out, first = first_report(tmp_path)
    assert len([name for name in first if name.startswith("figures/")]) == 4
    files = write_report(out, "second", [Section("Other", figures=[small_figure()])])
    assert sorted(report_files(out)) == sorted(
        ["report.html", "metrics.json", *(str(f.relative_to(out)) for f in files.figures)]
    )
    assert len(files.figures) == 2  # one figure, PNG and SVG: the first report's are gone
    assert json.loads(files.metrics.read_text())["title"] == "second"
    assert_no_temporaries(tmp_path)


def test_a_figure_of_the_old_report_can_be_reused(tmp_path):
    out, first = first_report(tmp_path)
    kept = next(out / name for name in first if name.endswith(".png"))
    files = write_report(out, "second", [Section("Again", figures=[kept])])
    assert kept.read_bytes() == first[str(kept.relative_to(out))]
    assert f'"{kept.relative_to(out).as_posix()}"' in files.html.read_text()


@pytest.mark.parametrize("fault", ["interrupt", "disk full"])
def test_a_failed_write_leaves_the_old_report_intact(tmp_path, monkeypatch, fault):
    from normlab import _files
    from normlab.report import html

    out, first = first_report(tmp_path)
    if fault == "interrupt":  # Ctrl-C after the second report's first figure
        saved = []

        def save(fig, path):
            saved.append(path)
            if len(saved) == 2:
                raise KeyboardInterrupt
            return plots_save_figure(fig, path)

        plots_save_figure = html.save_figure
        monkeypatch.setattr(html, "save_figure", save)
        raised = KeyboardInterrupt
    else:  # the disk fills up halfway through metrics.json

        def write_text(path, text, encoding="utf-8"):
            if path.name != "metrics.json":
                return _files.write_text_atomic(path, text, encoding)

            def half_then_full(stream):
                stream.write(text.encode()[: len(text) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

            return _files.write_atomic(path, half_then_full)

        monkeypatch.setattr(html, "write_text_atomic", write_text)
        raised = OSError
    sections = [Section(f"S{i}", figures=[small_figure()]) for i in range(3)]
    with pytest.raises(raised):
        write_report(out, "second", sections, checks(), {"value": 2})
    assert report_files(out) == first
    assert json.loads((out / "metrics.json").read_text())["title"] == "first"
    assert_no_temporaries(tmp_path)


def test_a_write_interrupted_by_sigint_leaves_the_old_report_intact(tmp_path):
    """SIGINT sent to ``normlab demo`` while it writes its report: exit 130, one line, the old
    report as it was, no temporary files."""
    out, first = first_report(tmp_path)
    marker = tmp_path / "saving"
    script = f"""
import signal, sys, time
# Ctrl-C as in a terminal, even when this test runs in a background job (which ignores SIGINT)
signal.signal(signal.SIGINT, signal.default_int_handler)
from normlab import cli, demo
from normlab.report import Section, html
from matplotlib.figure import Figure

def analysis(config):
    figures = [Figure(figsize=(2, 2)) for _ in range(3)]
    return demo.Analysis("one", Section("One", figures=figures), [])

real = html.save_figure
def slow(fig, path):
    written = real(fig, path)
    open({str(marker)!r}, "w").close()
    time.sleep(60)
    return written

cli.ANALYSES = demo.run.ANALYSES = (("one", analysis),)
html.save_figure = slow
sys.exit(cli.main(["demo", "--quick", "--out", {str(out)!r}]))
"""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", script], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never began writing its report"
            time.sleep(0.05)
        assert any(p.name.startswith(".report.tmp-") for p in tmp_path.iterdir())
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 130
    assert err.decode().strip().splitlines() == ["normlab demo: interrupted"]
    assert report_files(out) == first
    marker.unlink()
    assert_no_temporaries(tmp_path)


def test_report_folders_that_cannot_be_replaced_are_refused(tmp_path, monkeypatch):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    with pytest.raises(
        ValueError, match=r"holds files that are not a normlab report \(notes.txt\)"
    ):
        write_report(tmp_path / "notes", "t")
    assert (tmp_path / "notes" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        write_report(tmp_path / "file", "t")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        write_report(tmp_path / "file" / "sub", "t")
    monkeypatch.chdir(tmp_path / "notes")
    with pytest.raises(ValueError, match="the current folder or one above it"):
        write_report(".", "t")
    with pytest.raises(ValueError, match="the current folder or one above it"):
        write_report("..", "t")


def test_atomic_file_writes_keep_the_old_file_on_a_full_disk(tmp_path):
    from normlab._files import write_atomic, write_text_atomic

    target = tmp_path / "metrics.json"
    write_text_atomic(target, '{"complete": true}')
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def full(stream):
        stream.write(b'{"trunc')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, full)
    assert json.loads(target.read_text()) == {"complete": True}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
