"""File faults: a write interrupted by Ctrl-C (SIGINT to a child process caught mid-write), a full
disk (a writer that raises ENOSPC after N bytes), a folder that refuses the rename (EACCES,
EROFS; we run as root, so chmod would not stop us: the calls are patched). After each, nothing
half-written remains: no partial file under the final name, the old complete output intact, no
temporary file left."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from normlab import _files
from normlab.cli import main
from normlab.experiments import expand, run_sweep, write_table
from normlab.report import Section, save_figure, write_report
from normlab.training import TrainConfig
from normlab.training.checkpoint import save_checkpoint, write_text_atomic

SRC = Path(__file__).parents[2] / "src"
TINY = ["--width", "0.25", "--data", "gaussian:3x8x8", "--limit", "8", "--test-limit", "8",
        "--batch-size", "8", "--no-progress"]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones too), by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp-" in p.name]


# -- the old outputs each probe starts from ------------------------------------------------------


def _figure(label: str) -> Figure:
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [0, 1], label=label)
    return fig


def old_report(root: Path) -> Path:
    out = root / "report"
    write_report(out, "old", [Section("s", "text", figures=[_figure("old")])], metrics={"v": 1})
    return out


def _finished(folder: Path, seed: int, accuracy: float) -> None:
    base = {"epochs": 1, "data": "gaussian:1x4x4", "limit": 8, "batch_size": 8}
    config = TrainConfig(**base, seed=seed, out=str(folder)).to_dict()
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"status": "finished", "config": config, "final_test_accuracy": accuracy,
               "mean_train_accuracy": 0.5, "epochs": 1}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))


def old_table(root: Path) -> Path:
    for seed in (0, 1):
        _finished(root / f"run{seed}", seed, 0.5)
    write_table(root)
    _finished(root / "run1", 1, 0.9)  # the next table differs
    return root


GRID = {"base": {"epochs": 1, "data": "gaussian:1x4x4", "limit": 8, "batch_size": 8},
        "grid": {"seed": [0, 1]}}  # fmt: skip


def old_sweep(root: Path) -> Path:
    folder, runs = expand(GRID, root / "sweep")
    for run in runs:
        _finished(Path(run.config.out), run.config.seed, 0.5)
    run_sweep(folder, runs, on_event=lambda line: None)
    summary = Path(runs[0].config.out) / "summary.json"
    summary.write_text(json.dumps({"status": "diverged"}))  # the next sweep.json differs
    (root / "grid.yaml").write_text(json.dumps(GRID | {"out": str(folder)}))
    return folder


def old_checkpoint(root: Path) -> Path:
    path = root / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(4)}, "epoch": 0})
    return path


# -- Ctrl-C in the middle of a write -------------------------------------------------------------

CHILD = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # background jobs may ignore SIGINT
target, real_fsync = os.environ["HANG_ON"], os.fsync

def fsync(fd):
    real_fsync(fd)
    name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    if name.startswith(".tmp-" + target + "."):  # the new file is written, not yet renamed
        print("READY", flush=True)
        time.sleep(120)

os.fsync = fsync
kind, argv = sys.argv[1], sys.argv[2:]
if kind == "cli":
    from normlab.cli import main
    sys.exit(main(argv))
import torch
from matplotlib.figure import Figure
from normlab.report import Section, write_report
from normlab.training.checkpoint import save_checkpoint
if kind == "report":
    fig = Figure(figsize=(2, 2)); fig.subplots().plot([1, 0])
    write_report(argv[0], "new", [Section("s", "new", figures=[fig])], metrics={"v": 2})
elif kind == "checkpoint":
    save_checkpoint(argv[0], {"model": {"w": torch.ones(10**6)}, "epoch": 1})
"""


def interrupt(kind: str, argv: list[str], hang_on: str, cwd: Path) -> tuple[int, str, float]:
    """Run the child, wait until it is inside the write of ``hang_on``, send SIGINT; return its
    exit code, stderr and the seconds it took to stop."""
    env = os.environ | {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HANG_ON": hang_on}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
    )  # fmt: skip
    try:
        line = child.stdout.readline()
        while line and line.strip() != "READY":
            line = child.stdout.readline()
        assert line.strip() == "READY", child.stderr.read()
        started = time.monotonic()
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
        return child.returncode, err, time.monotonic() - started
    finally:
        if child.poll() is None:
            child.kill()


def _train_run(root: Path) -> Path:
    out = root / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


SIGINT_CASES = {
    # name: (prepare the old output -> folder checked, child kind, argv, file the write hangs on)
    "report": (old_report, "report", lambda f: [str(f)], "metrics.json"),
    "checkpoint": (old_checkpoint, "checkpoint", lambda f: [str(f)], "last.pt"),
    "table": (old_table, "cli", lambda f: ["table", str(f)], "results.csv"),
    "sweep": (old_sweep, "cli", lambda f: ["sweep", str(f.parent / "grid.yaml")], "sweep.json"),
    "train": (_train_run, "cli",
              lambda f: ["train", *TINY, "--out", str(f), "--resume", "--epochs", "2"], "last.pt"),
}  # fmt: skip


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Each case's old output, and the child interrupted while writing its new one (the
    children run at the same time)."""
    prepared = {}
    for name, (prepare, *_rest) in SIGINT_CASES.items():
        root = tmp_path_factory.mktemp(f"sigint-{name}")
        target = prepare(root)
        watched = target if target.is_dir() else target.parent
        prepared[name] = (root, target, watched, snapshot(watched))
    with ThreadPoolExecutor(len(SIGINT_CASES)) as pool:
        futures = {
            name: pool.submit(interrupt, kind, argv(prepared[name][1]), hang_on, prepared[name][0])
            for name, (_, kind, argv, hang_on) in SIGINT_CASES.items()
        }
        return {name: (*prepared[name], futures[name].result()) for name in SIGINT_CASES}


@pytest.mark.parametrize("name", list(SIGINT_CASES))
def test_ctrl_c_mid_write_leaves_the_old_output_and_no_temporary(name, interrupted):
    root, _target, watched, before, (code, err, seconds) = interrupted[name]
    assert seconds < 30
    if SIGINT_CASES[name][1] == "cli":  # the console's one line and exit code
        assert code == 130, err
        assert err.strip().splitlines()[-1].endswith(": interrupted"), err
        assert "Traceback" not in err
    else:
        assert code != 0
        assert "KeyboardInterrupt" in err
    after = snapshot(watched)
    if name == "train":  # the epoch's metrics may be new; the checkpoint is the old one, whole
        assert after["last.pt"] == before["last.pt"]
        assert set(after) == set(before)
        for line in after["metrics.jsonl"].decode().splitlines():
            json.loads(line)
        json.loads(after["summary.json"])
    else:
        assert after == before
    assert temporaries(root) == []
    assert not [p for p in root.iterdir() if p.name.startswith(".") and "tmp" in p.name]


def test_an_interrupted_run_resumes_to_the_end(interrupted):
    _root, out, *_ = interrupted["train"]
    assert main(["train", *TINY, "--out", str(out), "--resume", "--epochs", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["epochs"] == 2


# -- a full disk, a refused rename ---------------------------------------------------------------


def full_disk_after(limit: int):
    """An ``os.fdopen`` whose streams raise ENOSPC once ``limit`` bytes are written."""
    real = os.fdopen

    class Full:
        def __init__(self, stream):
            self.stream, self.written = stream, 0

        def write(self, data):
            if self.written + len(data) > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.stream.write(data)

        def __getattr__(self, name):
            return getattr(self.stream, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

    return lambda fd, *args, **kwargs: Full(real(fd, *args, **kwargs))


def refuse(error: int, words: str):
    def call(*args, **kwargs):
        raise OSError(error, words, str(args[-1]) if args else None)

    return call


WRITERS = {
    "checkpoint": (old_checkpoint, lambda t: save_checkpoint(t, {"model": {"w": torch.ones(9)}, "epoch": 2})),
    "text": (lambda r: (write_text_atomic(r / "summary.json", '{"old": 1}'), r / "summary.json")[1],
             lambda t: write_text_atomic(t, '{"new": 2}' * 50)),
    "report": (old_report, lambda t: write_report(t, "new", [Section("n", figures=[_figure("n")])])),
    "table": (old_table, lambda t: write_table(t)),
    "sweep": (old_sweep, lambda t: run_sweep(t, expand(GRID, t)[1], on_event=lambda line: None)),
    "figure": (lambda r: save_figure(_figure("old"), r / "fig")[0], lambda t: save_figure(_figure("new"), t)),
    "cli-table": (old_table, lambda t: main(["table", str(t)]) == 2 or None),
}  # fmt: skip
FAULTS = {
    "ENOSPC-at-0": ("fdopen", full_disk_after(0), "No space left on device"),
    "ENOSPC-after-100": ("fdopen", full_disk_after(100), "No space left on device"),
    "EACCES-replace": ("replace", refuse(errno.EACCES, "Permission denied"), "Permission denied"),
    "EROFS-rename": (
        "rename",
        refuse(errno.EROFS, "Read-only file system"),
        "Read-only file system",
    ),
}


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failed_write_leaves_the_old_output(tmp_path, monkeypatch, capsys, writer, fault):
    prepare, write = WRITERS[writer]
    target = prepare(tmp_path)
    watched = target if target.is_dir() else target.parent
    before = snapshot(watched)
    call, patched, words = FAULTS[fault]
    monkeypatch.setattr(os, call, patched)
    if writer == "cli-table":
        write(target)
        err = capsys.readouterr().err
        if call == "rename":  # a table's files are renamed with os.replace, never os.rename
            assert err == ""
            assert "70.00 ± 28.28 (n=2)" in (target / "table.md").read_text()
            return
        assert err.startswith("normlab table: error: "), err
        assert words in err, err
        assert len(err.strip().splitlines()) == 1
    else:
        try:
            write(target)
            failed = None
        except OSError as error:
            failed = error
        if failed is None:  # this writer never calls the patched function
            assert (call, writer) in {("rename", "checkpoint"), ("rename", "text"),
                                      ("rename", "table"), ("rename", "sweep"),
                                      ("rename", "figure")}  # fmt: skip
            return
        assert words in str(failed)
    monkeypatch.undo()
    assert snapshot(watched) == before
    assert temporaries(tmp_path) == []


def test_a_group_whose_third_rename_fails_is_rolled_back(tmp_path, monkeypatch):
    target = old_table(tmp_path)
    before = snapshot(target)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Permission denied"):
        write_table(target)
    monkeypatch.undo()
    assert len(calls) >= 3
    assert snapshot(target) == before
    assert temporaries(tmp_path) == []


def test_a_folder_that_is_not_writable_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """Root ignores permission bits, so the check is made to see a read-only folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert main(["demo", "--quick", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write to --out {tmp_path / 'out'}: {tmp_path} is not writable" in err
    assert list(tmp_path.iterdir()) == []


def test_a_parent_that_refuses_files_is_named(tmp_path, monkeypatch):
    def no_files(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_files.tempfile, "mkstemp", no_files)
    with pytest.raises(
        ValueError, match=r"its parent folder .* is not writable \(Permission denied\)"
    ):
        write_report(tmp_path / "report", "t")
    assert list(tmp_path.iterdir()) == []
