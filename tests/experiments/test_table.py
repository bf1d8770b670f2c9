"""Table arithmetic on run folders the tests write: means, standard deviations, seed counts,
X / Y pairing, and every run that cannot be read reported."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from normlab.experiments import build_table, read_runs, write_table
from normlab.training import TrainConfig


def fabricate(folder: Path, name: str, accuracy: float, status: str = "finished", **config):
    run = folder / name
    run.mkdir(parents=True)
    summary = {
        "status": status,
        "epochs": 3,
        "final_test_accuracy": accuracy,
        "best_test_accuracy": accuracy + 0.01,
        "mean_train_accuracy": accuracy / 2,
        "final_train_loss": 1.0,
        "wall_seconds": 1.0,
        "config": TrainConfig(**config).resolved().to_dict(),
    }
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path):
    values = {
        ("bn", "none"): [0.90, 0.92, 0.94],
        ("bn", "extra"): [0.93, 0.95],
        ("gn8+pn", "none"): [0.91],
    }
    for (norm, reg), accuracies in values.items():
        for seed, accuracy in enumerate(accuracies):
            fabricate(tmp_path, f"{norm}-{reg}-{seed}", accuracy, norm=norm, regularization=reg,
                      seed=seed)  # fmt: skip
    return tmp_path, values


def test_cells_are_mean_std_and_count_over_seeds_paired_x_over_y(sweep):
    folder, values = sweep
    table = build_table(read_runs(folder).rows)
    cell = table.cells[("bn", "resnet20", "none")]
    assert cell.mean == pytest.approx(statistics.fmean(values[("bn", "none")]))
    assert cell.std == pytest.approx(statistics.stdev(values[("bn", "none")]))
    assert cell.n == 3
    assert table.text("bn", "resnet20") == "92.00 ± 2.00 (n=3) / 94.00 ± 1.41 (n=2)"
    assert table.text("gn8+pn", "resnet20") == "91.00 ± 0.00 (n=1)"
    assert "the columns key 'model' does not vary" in " ".join(table.notes)


def test_write_table_writes_every_file(sweep, tmp_path_factory):
    folder, _ = sweep
    out = tmp_path_factory.mktemp("tables")
    write_table(folder, out)
    for name in (
        "table.md",
        "table.csv",
        "train_table.md",
        "results.csv",
        "table.png",
        "table.svg",
    ):
        assert (out / name).exists(), name
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 6  # header, one row per run
    assert "| bn | 92.00 ± 2.00 (n=3) / 94.00 ± 1.41 (n=2) |" in (out / "table.md").read_text()
    assert "46.00" in (out / "train_table.md").read_text()  # mean training accuracy of bn, none


def test_corrupt_and_unfinished_runs_are_reported_not_dropped(sweep):
    folder, _ = sweep
    (folder / "broken").mkdir()
    (folder / "broken" / "summary.json").write_text("{not json")
    fabricate(folder, "diverged", 0.1, status="diverged", norm="ln")
    (folder / "failed").mkdir()  # a job's own record of a failure, as run_one writes it
    (folder / "failed" / "summary.json").write_text(
        json.dumps({"status": "failed", "error": "ValueError: no data"})
    )
    runs = read_runs(folder)
    assert len(runs.rows) == 6
    assert any("status 'failed' (ValueError: no data)" in p for p in runs.problems)
    assert any("broken" in p and "corrupt summary" in p for p in runs.problems)
    assert any("diverged" in p and "status 'diverged'" in p for p in runs.problems)
    _, notes = write_table(folder)
    assert any("corrupt summary" in n for n in notes)


def test_runs_differing_in_another_key_need_an_axis_or_a_selection(sweep):
    folder, _ = sweep
    fabricate(folder, "bn-lr", 0.5, norm="bn", lr=0.5)
    rows = read_runs(folder).rows
    with pytest.raises(ValueError, match="also differ in lr"):
        build_table(rows)
    table = build_table(rows, rows_key="norm", cols_key="lr")
    assert ("bn", "0.5", "none") in table.cells
    selected, _ = write_table(folder, where={"lr": "0.5"}, cols_key="model")
    assert selected.cells[("bn", "resnet20", "none")].n == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows_key": "nrom"}, "Did you mean 'norm'"),
        ({"metric": "accuracy"}, "unknown metric"),
    ],
)
def test_bad_axes_and_metrics_are_refused(sweep, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_table(read_runs(sweep[0]).rows, **kwargs)


def test_a_folder_without_runs_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="holds no run"):
        read_runs(tmp_path)
