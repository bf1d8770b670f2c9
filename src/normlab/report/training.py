r"""Figures of training runs: the PN paper's Fig. 2 bottom row, and training curves.

``plot_runs(runs, out)`` reads run folders written by :func:`normlab.training.train` and draws

* ``power_through_training``: per run, the stacked fractions P1/P .. P4/P of every normalization
  step's output against depth, one panel per probed epoch (PN paper Fig. 2, bottom row); with
  several runs, one row of panels per run;
* ``power_by_depth``: P1/P of a few depths against epochs, one line per depth;
* ``training_curves``: train and test accuracy and loss against epochs, one line per run.

Each figure is written as PNG and SVG (:func:`~normlab.report.plots.save_figure`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plots import TERMS, draw_power_stack, new_figure, save_figure, style


@dataclass(frozen=True)
class RunRecord:
    """What a run folder holds for plotting."""

    folder: Path
    label: str
    metrics: list[dict[str, Any]]
    diagnostics: list[dict[str, Any]]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}: line {number} is not JSON") from None
    return rows


def read_run(folder: str | Path) -> RunRecord:
    """The metrics and diagnostics of a run folder; a clear error when it holds no run."""
    folder = Path(folder)
    if not (folder / "metrics.jsonl").exists() and not (folder / "diagnostics.jsonl").exists():
        raise ValueError(
            f"{folder} holds no training run (no metrics.jsonl or diagnostics.jsonl): pass the "
            f"--out folder of `normlab train`"
        )
    label = folder.name
    config = folder / "config.yaml"
    if config.exists():
        import yaml

        values = yaml.safe_load(config.read_text()) or {}
        label = f"{values.get('model', '?')} {values.get('norm', '?')} ({folder.name})"
    return RunRecord(
        folder, label, _jsonl(folder / "metrics.jsonl"), _jsonl(folder / "diagnostics.jsonl")
    )


def _stack(ax, fractions: dict[str, list[float | None]], title: str) -> None:
    """A probe's fractions (None where a layer had no power, drawn as 0) as stacked areas."""
    draw_power_stack(ax, {t: [v if v is not None else 0.0 for v in fractions[t]] for t in TERMS})
    ax.set(title=title)


def _with_power(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """The runs whose probes hold a power decomposition (models with normalization steps)."""
    return [run for run in runs if run.diagnostics and run.diagnostics[0].get("power")]


def plot_power_through_training(runs: Sequence[RunRecord], path: str | Path) -> list[Path]:
    """Fig. 2 bottom row: one row per run, one panel per probed epoch."""
    runs = _with_power(runs)
    if not runs:
        raise ValueError(
            "no run has a power decomposition: train a model with normalization steps with "
            "--diagnostics-every K"
        )
    columns = max(len(run.diagnostics) for run in runs)
    with style():
        fig, axes = new_figure(columns * len(runs), width=2.8, height=2.5, columns=columns)
        for row, run in enumerate(runs):
            for column in range(columns):
                ax = axes[row * columns + column]
                if column >= len(run.diagnostics):
                    ax.set_visible(False)
                    continue
                record = run.diagnostics[column]
                title = f"epoch {record['epochs_done']}"
                _stack(ax, record["power"]["fractions"], title)
                if column == 0:
                    ax.set_ylabel(f"{run.label}\nfraction of P", fontsize=8)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels))
        fig.suptitle("Power decomposition of ỹ through training (PN paper, Fig. 2 bottom row)")
        return save_figure(fig, path)


def plot_power_by_depth(runs: Sequence[RunRecord], path: str | Path) -> list[Path]:
    """P1/P (the collapsed part of the power) against epochs for the first, middle and last
    normalization step, one panel per run."""
    runs = _with_power(runs)
    if not runs:
        raise ValueError(
            "no run has a power decomposition: train a model with normalization steps with "
            "--diagnostics-every K"
        )
    with style():
        fig, axes = new_figure(len(runs), width=3.6, height=2.8, columns=min(len(runs), 3))
        for ax, run in zip(axes, runs, strict=True):
            epochs = [r["epochs_done"] for r in run.diagnostics]
            layers = len(run.diagnostics[0]["power"]["fractions"]["p1"])
            for index in sorted({0, layers // 2, layers - 1}):
                values = [r["power"]["fractions"]["p1"][index] for r in run.diagnostics]
                ax.plot(
                    epochs,
                    [v if v is not None else float("nan") for v in values],
                    marker="o",
                    label=f"layer {index + 1}",
                )
            ax.set(title=run.label, xlabel="epochs", ylabel="P1 / P", ylim=(0, 1))
            ax.legend(fontsize=7)
        return save_figure(fig, path)


def plot_training_curves(runs: Sequence[RunRecord], path: str | Path) -> list[Path]:
    """Accuracy and loss against epochs, train and test, one line per run."""
    runs = [run for run in runs if run.metrics]
    if not runs:
        raise ValueError("no run has metrics yet (metrics.jsonl is empty or missing)")
    panels = (
        ("train_accuracy", "train accuracy"),
        ("test_accuracy", "test accuracy"),
        ("train_loss", "train loss"),
        ("test_loss", "test loss"),
    )
    with style():
        fig, axes = new_figure(len(panels), width=3.4, height=2.7, columns=4)
        for ax, (key, title) in zip(axes, panels, strict=True):
            for run in runs:
                epochs = [row["epoch"] + 1 for row in run.metrics]
                ax.plot(epochs, [row[key] for row in run.metrics], marker=".", label=run.label)
            ax.set(title=title, xlabel="epoch")
        axes[0].legend(fontsize=7)
        return save_figure(fig, path)


def plot_runs(folders: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Every figure the runs support, written under ``out``; returns the files."""
    runs = [read_run(folder) for folder in folders]
    out = Path(out)
    written = []
    if any(run.metrics for run in runs):
        written += plot_training_curves(runs, out / "training_curves")
    if _with_power(runs):
        written += plot_power_through_training(runs, out / "power_through_training")
        written += plot_power_by_depth(runs, out / "power_by_depth")
    if not written:
        raise ValueError("the runs hold no epoch yet: nothing to plot")
    return written
