r"""``normlab table``: the papers' tables from a folder of runs.

Every ``summary.json`` under the folder is one run (its resolved configuration is inside). Cells
are grouped by two configuration keys (rows: ``norm``, columns: ``model`` by default) and show, as
the PN paper's Tables 2–4 do, ``X / Y``: the metric without / with extra regularization, each the
mean ± standard deviation over the runs of the cell (the seeds) and their number. Runs that differ
in any other key are refused unless ``where`` selects among them, so that seeds are the only thing
a cell averages over.

Outputs (:func:`write_table`): ``table.md``, ``table.csv``, ``train_table.md`` (mean training
accuracy, Beyond BatchNorm's optimization-speed measure), ``results.csv`` (one row per run:
configuration columns and metrics, for pandas or duckdb) and ``table.png``/``.svg`` (points
with error bars).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._checks import is_real
from .._files import FileGroup, file_group
from ..training.config import CONFIG_KEYS, ConfigError

METRICS = ("final_test_accuracy", "best_test_accuracy", "mean_train_accuracy", "final_train_loss")
PERCENT = frozenset({"final_test_accuracy", "best_test_accuracy", "mean_train_accuracy"})
IGNORED = frozenset(
    {"seed", "out", "resume", "workers", "progress", "tensorboard", "regularization"}
)
IGNORED |= {"label_smoothing", "mixup", "cutmix", "dropout", "drop_path"}  # resolved by the preset


@dataclass
class Runs:
    """The runs read from a folder, and the problems met on the way."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_runs(folder: str | Path) -> Runs:
    """Every run under ``folder``; unreadable summaries are reported, never silently dropped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder of runs")
    runs = Runs()
    for path in sorted(folder.rglob("summary.json")):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            status = summary["status"]
            if status == "finished":
                config = summary["config"]
                if not isinstance(config, dict):
                    raise TypeError(f"its config is a {type(config).__name__}, not a mapping")
        except (ValueError, KeyError, TypeError) as error:  # not JSON, not UTF-8, no mapping
            runs.problems.append(
                f"{path}: corrupt summary ({type(error).__name__}: {error}), skipped"
            )
            continue
        if status != "finished":
            error = f" ({summary['error']})" if summary.get("error") else ""
            runs.problems.append(f"{path.parent}: status {status!r}{error}, not in the table")
            continue
        runs.rows.append({"run": str(path.parent.relative_to(folder)), **config, **summary})
    if not runs.rows and not runs.problems:
        raise ConfigError(f"{folder} holds no run (no summary.json below it)")
    return runs


def _value(row: dict[str, Any], key: str) -> str:
    return json.dumps(row.get(key)) if isinstance(row.get(key), list | dict) else str(row.get(key))


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Cell:
    """The runs of one (row, column, regularization) group: mean ± std of the metric over n."""

    mean: float
    std: float
    n: int

    def format(self, percent: bool) -> str:
        scale, digits = (100.0, 2) if percent else (1.0, 4)
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f} (n={self.n})"


@dataclass
class Table:
    rows_key: str
    cols_key: str
    metric: str
    row_values: list[str]
    col_values: list[str]
    cells: dict[tuple[str, str, str], Cell]
    notes: list[str]

    def text(self, row: str, col: str) -> str:
        plain = self.cells.get((row, col, "none"))
        extra = self.cells.get((row, col, "extra"))
        percent = self.metric in PERCENT
        if plain is None and extra is None:
            return "—"
        left = plain.format(percent) if plain else "—"
        return left if extra is None else f"{left} / {extra.format(percent)}"

    def markdown(self) -> str:
        lines = [f"| {self.rows_key} \\ {self.cols_key} | " + " | ".join(self.col_values) + " |"]
        lines.append("|---" * (len(self.col_values) + 1) + "|")
        for row in self.row_values:
            lines.append(
                f"| {row} | " + " | ".join(self.text(row, c) for c in self.col_values) + " |"
            )
        return "\n".join(lines)

    def csv(self) -> str:
        stream = io.StringIO()
        writer = csv.writer(stream)
        writer.writerow([self.rows_key, self.cols_key, "regularization", "mean", "std", "n"])
        for (row, col, reg), cell in sorted(self.cells.items()):
            writer.writerow([row, col, reg, cell.mean, cell.std, cell.n])
        return stream.getvalue()


def _check_key(key: str, what: str) -> None:
    if key not in CONFIG_KEYS:
        from .._checks import unknown

        raise ConfigError(str(unknown(f"{what} key", key, CONFIG_KEYS)))


def select(runs: list[dict[str, Any]], where: dict[str, str]) -> list[dict[str, Any]]:
    for key in where:
        _check_key(key, "--where")
    return [r for r in runs if all(_value(r, k) == v for k, v in where.items())]


def build_table(
    runs: list[dict[str, Any]], rows_key: str = "norm", cols_key: str = "model",
    metric: str = "final_test_accuracy",
) -> Table:  # fmt: skip
    """Group ``runs`` into cells (see the module docstring)."""
    _check_key(rows_key, "--rows")
    _check_key(cols_key, "--cols")
    if metric not in METRICS:
        from .._checks import unknown

        raise ConfigError(str(unknown("metric", metric, METRICS)))
    if not runs:
        raise ConfigError("no finished run to tabulate")
    if isinstance(runs, str) or not all(isinstance(r, dict) for r in runs):
        raise ConfigError("build_table needs a list of runs, each a mapping (read_runs(...).rows)")
    notes = []
    others = [
        k for k in CONFIG_KEYS
        if k not in IGNORED | {rows_key, cols_key} and len({_value(r, k) for r in runs}) > 1
    ]  # fmt: skip
    if others:
        examples = {k: sorted({_value(r, k) for r in runs}) for k in others}
        raise ConfigError(
            f"the runs also differ in {', '.join(others)} ({examples}): make one of them an axis "
            f"(--rows/--cols) or select with --where KEY=VALUE"
        )
    for key, axis in ((rows_key, "rows"), (cols_key, "columns")):
        if len({_value(r, key) for r in runs}) == 1:
            notes.append(f"note: the {axis} key {key!r} does not vary (one {axis[:-1]} only)")
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in runs:
        value = r.get(metric)
        if not is_real(value) or not math.isfinite(value):  # a string, a bool, None, NaN
            notes.append(f"note: {r['run']} has no finite {metric}, left out")
            continue
        groups[(_value(r, rows_key), _value(r, cols_key), str(r.get("regularization")))].append(
            value
        )
    cells = {key: Cell(*_mean_std(values), len(values)) for key, values in groups.items()}
    row_values = list(dict.fromkeys(_value(r, rows_key) for r in runs))
    col_values = list(dict.fromkeys(_value(r, cols_key) for r in runs))
    return Table(rows_key, cols_key, metric, row_values, col_values, cells, notes)


def results_csv(runs: list[dict[str, Any]]) -> str:
    """One row per run: its folder, every configuration key, status and metrics."""
    stream = io.StringIO()
    columns = ["run", *CONFIG_KEYS, "status", "epochs", *METRICS, "wall_seconds"]
    writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in runs:
        writer.writerow({k: _value(r, k) if k in CONFIG_KEYS else r.get(k) for k in columns})
    return stream.getvalue()


def plot_table(table: Table, path: Path, files: FileGroup | None = None) -> list[Path]:
    from ..report.plots import new_figure, save_figure, style

    percent = 100.0 if table.metric in PERCENT else 1.0
    with style():
        fig, (ax,) = new_figure(1, width=max(4.0, 1.1 * len(table.row_values) + 2), height=3.2)
        offsets = {"none": -0.12, "extra": 0.12}
        for j, col in enumerate(table.col_values):
            for reg, offset in offsets.items():
                xs, ys, es = [], [], []
                for i, row in enumerate(table.row_values):
                    cell = table.cells.get((row, col, reg))
                    if cell is not None:
                        xs.append(i + offset + 0.05 * j)
                        ys.append(cell.mean * percent)
                        es.append(cell.std * percent)
                if xs:
                    label = col if reg == "none" else f"{col} (extra reg.)"
                    ax.errorbar(xs, ys, yerr=es, fmt="o" if reg == "none" else "s", capsize=3,
                                label=label)  # fmt: skip
        ax.set_xticks(range(len(table.row_values)), table.row_values, rotation=30)
        ax.set(ylabel=table.metric + (" (%)" if percent == 100.0 else ""), xlabel=table.rows_key)
        ax.legend(fontsize=7)
        return save_figure(fig, path, files=files)


def write_table(
    folder: str | Path, out: str | Path | None = None, rows_key: str = "norm",
    cols_key: str = "model", metric: str = "final_test_accuracy",
    where: dict[str, str] | None = None,
) -> tuple[Table, list[str]]:  # fmt: skip
    """Build the tables of the runs under ``folder`` and write their files into ``out``
    (default: the folder itself); return the main table and the problems and notes met."""
    runs = read_runs(folder)
    chosen = select(runs.rows, where or {})
    table = build_table(chosen, rows_key, cols_key, metric)
    train = build_table(chosen, rows_key, cols_key, "mean_train_accuracy")
    out = Path(out or folder)
    out.mkdir(parents=True, exist_ok=True)
    with file_group() as files:  # the five files of one table, or the old ones: never a mix
        files.write_text(out / "table.md", table.markdown() + "\n")
        files.write_text(out / "table.csv", table.csv())
        files.write_text(out / "train_table.md", train.markdown() + "\n")
        files.write_text(out / "results.csv", results_csv(runs.rows))
        plot_table(table, out / "table", files)
    return table, runs.problems + table.notes
