"""Grids, sweeps and tables at their edges: grid files that are not grids, sweep arguments,
run folders whose summaries are corrupt, metrics that are not numbers; and the files a table
writes, which are checked against the runs."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from normlab._checks import ArgumentTypeError
from normlab.experiments import build_table, expand, load_grid, read_runs, run_sweep, write_table
from normlab.experiments.sweep import read_status
from normlab.experiments.table import select
from normlab.training import ConfigError, TrainConfig

from .probes import check, ids

BASE = {"epochs": 1, "data": "gaussian:1x4x4", "limit": 8, "batch_size": 8}


@pytest.mark.parametrize(
    ("spec", "words"),
    [(None, "a grid must be a mapping of sections (out, base, grid, cases), got NoneType"),
     ([], "a grid must be a mapping of sections"),
     ("grid", "got str"),
     ({"bogus": 1}, "unknown grid section(s) ['bogus']; valid sections: out, base, grid, cases"),
     ({}, "the grid is empty"),
     ({"grid": {"norm": "bn"}}, "grid: 'norm' must be a non-empty list of values, got 'bn'"),
     ({"grid": {"norm": []}}, "must be a non-empty list of values, got []"),
     ({"grid": {"nrom": ["bn"]}}, "'nrom' is not a config key; did you mean 'norm'?"),
     ({"base": [1]}, "base must be a mapping of config keys, got list"),
     ({"cases": {"a": 1}}, "cases must be a list of mappings, got dict"),
     ({"cases": [1]}, "cases[0] must be a mapping of config keys, got int"),
     ({"grid": {"norm": ["bn", "bn"]}}, "the grid holds the same run twice"),
     ({"grid": {"epochs": [0]}}, "epochs must be a positive integer, got 0"),
     ({"grid": {"norm": ["gn8", "bogus"]}}, "unknown scheme 'bogus'"),
     ({"grid": {"model": ["resnet20", "resnet21"]}}, "unknown model 'resnet21'"),
     ({"grid": {"amp": ["yes"]}}, "amp must be true or false"),
     ({"out": 3, "base": BASE}, "out must be a folder path, got 3 (int)")],
    ids=ids,
)  # fmt: skip
def test_bad_grids_fail_before_any_run(spec, words):
    check(lambda: expand(spec), ConfigError, words)


def test_a_grid_expands_to_distinct_validated_runs(tmp_path):
    folder, runs = expand({"base": BASE, "grid": {"norm": ["bn", "gn1"], "seed": [0, 1]}}, tmp_path)
    assert folder == tmp_path
    assert len(runs) == 4
    assert len({r.name for r in runs}) == 4
    assert all(Path(r.config.out).parent == tmp_path for r in runs)


@pytest.mark.parametrize(
    ("content", "words"),
    [("grid: [1, 2]\n", "grid must be a mapping of config keys, got list"),
     ("grid: {norm: [bn\n", "is not valid YAML"),
     ("- a\n", "must hold a mapping of config keys, got list")],
    ids=ids,
)  # fmt: skip
def test_bad_grid_files_name_the_problem(tmp_path, content, words):
    path = tmp_path / "grid.yaml"
    path.write_text(content)
    check(lambda: load_grid(path), ConfigError, words)


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ConfigError), (-1, ConfigError), (1.5, ConfigError), ("2", ConfigError),
     (None, ConfigError), (True, ConfigError)],
    ids=ids,
)  # fmt: skip
def test_max_parallel_is_a_positive_integer(tmp_path, value, error):
    """1.5 and True used to be taken, "2" and None to fail with '<' not supported."""
    check(lambda: run_sweep(tmp_path, [], max_parallel=value), error, "max_parallel must be a")


def test_an_unknown_executor_lists_the_executors(tmp_path):
    _, runs = expand({"base": BASE}, tmp_path)
    check(lambda: run_sweep(tmp_path, runs, executor="k8s"), ConfigError, "local, slurm")


def _finished(folder: Path, norm: str, seed: int, accuracy: object) -> None:
    config = TrainConfig(**BASE, norm=norm, seed=seed, out=str(folder)).to_dict()
    folder.mkdir(parents=True)
    summary = {"status": "finished", "config": config, "final_test_accuracy": accuracy,
               "mean_train_accuracy": 0.5, "epochs": 1}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))


def test_a_sweep_of_finished_runs_starts_nothing_and_records_them(tmp_path):
    _, runs = expand({"base": BASE, "grid": {"seed": [0, 1]}}, tmp_path)
    for run in runs:
        _finished(Path(run.config.out), "bn", run.config.seed, 0.5)
    events = []
    entries = run_sweep(tmp_path, runs, on_event=events.append)
    assert [e["status"] for e in entries] == ["finished", "finished"]
    assert all(line.startswith("skip") for line in events)
    assert json.loads((tmp_path / "sweep.json").read_text()) == json.loads(json.dumps(entries))
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize(
    ("content", "status"),
    [(b"\xff\xfe garbage", "new"), (b"{not json", "new"), (b"[1, 2]", "new"),
     (b'{"status": "weird"}', "new"), (b'{"status": "failed"}', "failed"),
     (b'{"status": "diverged"}', "diverged")],
    ids=ids,
)  # fmt: skip
def test_the_sweep_reads_any_summary_as_a_status(tmp_path, content, status):
    """A summary that is not UTF-8 used to stop the whole sweep with a UnicodeDecodeError."""
    (tmp_path / "summary.json").write_bytes(content)
    assert read_status(tmp_path) == status


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"\xff\xfe", "UnicodeDecodeError"), (b"{oops", "JSONDecodeError"), (b"[1]", "TypeError"),
     (b'{"status": "finished"}', "KeyError: 'config'"),
     (b'{"status": "finished", "config": [1]}', "its config is a list, not a mapping")],
    ids=ids,
)  # fmt: skip
def test_corrupt_summaries_are_reported_not_fatal(tmp_path, content, words):
    _finished(tmp_path / "good", "bn", 0, 0.75)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_bytes(content)
    runs = read_runs(tmp_path)
    assert [r["run"] for r in runs.rows] == ["good"]
    assert len(runs.problems) == 1
    assert words in runs.problems[0]
    assert "bad" in runs.problems[0]


@pytest.mark.parametrize("value", ["0.9", True, None, math.nan, [0.9]], ids=ids)
def test_a_metric_that_is_not_a_finite_number_is_left_out_and_noted(tmp_path, value):
    """True used to count as an accuracy of 1.0, a string to raise a TypeError."""
    _finished(tmp_path / "a", "bn", 0, 0.5)
    _finished(tmp_path / "b", "bn", 1, value)
    table = build_table(read_runs(tmp_path).rows)
    cell = table.cells[("bn", "resnet20", "none")]
    assert (cell.mean, cell.n) == (0.5, 1)
    assert any("b has no finite final_test_accuracy" in note for note in table.notes)


@pytest.mark.parametrize(
    ("call", "words"),
    [(lambda rows: build_table(rows, rows_key="nrom"), "unknown --rows key 'nrom'"),
     (lambda rows: build_table(rows, cols_key=""), "unknown --cols key ''"),
     (lambda rows: build_table(rows, metric="accuracy"), "unknown metric 'accuracy'"),
     (lambda rows: build_table([]), "no finished run to tabulate"),
     (lambda rows: build_table("abc"), "build_table needs a list of runs"),
     (lambda rows: select(rows, {"bogus": "1"}), "unknown --where key 'bogus'")],
    ids=[f"table-{i}" for i in range(6)],
)  # fmt: skip
def test_table_arguments_name_the_key_and_the_choices(tmp_path, call, words):
    _finished(tmp_path / "a", "bn", 0, 0.5)
    check(lambda: call(read_runs(tmp_path).rows), ConfigError, words)


def test_runs_that_differ_in_another_key_are_refused(tmp_path):
    _finished(tmp_path / "a", "bn", 0, 0.5)
    config = TrainConfig(**BASE, lr=0.3, out="x").to_dict()
    (tmp_path / "b").mkdir()
    summary = {"status": "finished", "config": config, "final_test_accuracy": 0.6}
    (tmp_path / "b" / "summary.json").write_text(json.dumps(summary))
    check(lambda: build_table(read_runs(tmp_path).rows), ConfigError, "also differ in lr")


def test_the_table_files_agree_with_the_runs(tmp_path):
    for seed, accuracy in ((0, 0.5), (1, 0.7)):
        _finished(tmp_path / f"bn-{seed}", "bn", seed, accuracy)
    _finished(tmp_path / "gn", "gn1", 0, 0.9)
    table, _notes = write_table(tmp_path)
    assert table.cells[("bn", "resnet20", "none")].mean == pytest.approx(0.6)
    assert "60.00 ± 14.14 (n=2)" in (tmp_path / "table.md").read_text()
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert sorted(r["final_test_accuracy"] for r in rows) == ["0.5", "0.7", "0.9"]
    names = {p.name for p in tmp_path.iterdir() if p.is_file()}
    assert names == {"table.md", "table.csv", "train_table.md", "results.csv", "table.png",
                     "table.svg"}  # fmt: skip


def test_write_table_refuses_a_folder_of_no_runs(tmp_path):
    check(lambda: write_table(tmp_path), ConfigError, "holds no run (no summary.json below it)")
    check(lambda: write_table(tmp_path / "none"), ConfigError, "is not a folder of runs")
    assert list(tmp_path.iterdir()) == []


def test_argument_type_errors_are_value_errors_for_old_callers():
    assert issubclass(ArgumentTypeError, ValueError)
