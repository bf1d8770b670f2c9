r"""``normlab reproduce NAME --data SPEC``: run one reproduction's sweep and write its document.

The sweep (:func:`~normlab.experiments.sweep.run_sweep`, submitit's local executor) runs in
``runs/NAME`` (finished runs are kept, so a killed reproduction resumes where it stopped); then
the analysis of :mod:`~normlab.experiments.reproductions` judges each claim from the finished runs
and ``docs/results/NAME.md`` is written (figures in ``docs/results/NAME/``): the verdict, the
claims with their numbers, the tables, the figures, the settings and the command that
regenerates it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .._checks import unknown
from .._files import check_replaceable_folder, file_group, replaced_folder
from . import claims as c
from .grid import expand
from .reproductions import REPRODUCTIONS, Findings, Reproduction, Scale
from .sweep import FINAL, job_threads, plan, run_sweep
from .table import read_runs

FIGURE_SUFFIXES = (".png", ".svg")


@dataclass(frozen=True)
class Outcome:
    """A written reproduction: its document, verdict and the runs it could not use."""

    document: Path
    verdict: str
    findings: Findings
    problems: list[str]


def get(name: str) -> Reproduction:
    if name not in REPRODUCTIONS:
        raise unknown("reproduction", name, REPRODUCTIONS)
    return REPRODUCTIONS[name]


def reproduce(
    name: str,
    data: str,
    runs: str | Path = "runs",
    out: str | Path = "docs/results",
    max_parallel: int = 1,
    scale: Scale | None = None,
    command: str | None = None,
    on_event=print,
) -> Outcome:
    """Run reproduction ``name`` on ``data`` and write ``out/NAME.md``; return its outcome."""
    reproduction = get(name)
    folder, planned = expand(reproduction.spec(data, scale), Path(runs) / name)
    ran = sum(state.status not in FINAL for state in plan(planned))
    started = time.perf_counter()
    run_sweep(folder, planned, "local", max_parallel, on_event=on_event)
    sweep_seconds = time.perf_counter() - started
    found = read_runs(folder)
    planned_names = {run.name for run in planned}
    rows = [row | {"folder": str(folder / row["run"])} for row in found.rows]
    rows = [row for row in rows if row["run"] in planned_names]  # not an older grid's folders
    problems = [p for p in found.problems if any(name in p for name in planned_names)]
    others = sorted(
        {p.name for p in folder.iterdir() if p.is_dir()} - planned_names - {".submitit"}
    )
    if others:
        problems.append(f"ignored {len(others)} folder(s) not in this grid: {', '.join(others)}")
    figures = Path(out) / name
    owned = [p.name for p in figures.iterdir()] if figures.is_dir() else []
    check_replaceable_folder(figures, [n for n in owned if n.endswith(FIGURE_SUFFIXES)],
                             "the figure folder", "set of figures")  # fmt: skip
    path = Path(out) / f"{name}.md"
    # The document and its figures are one result: the figures are drawn into a fresh folder
    # swapped in as a whole (no stale figure of an earlier grid left beside them), the document
    # is staged and renamed right after; an error or an interrupt leaves the old pair.
    with file_group() as files, replaced_folder(figures) as drawn:
        findings = reproduction.analyse(rows, drawn)
        findings = dataclasses.replace(
            findings, figures=[figures / f.relative_to(drawn) for f in findings.figures]
        )
        verdict = c.overall(findings.claims)
        text = document(
            reproduction,
            findings,
            verdict,
            rows,
            problems,
            scale or reproduction.scale,
            sweep_seconds,
            max_parallel,
            command or f"normlab reproduce {name} --data {data}",
            Path(out),
            data,
            ran,
        )
        files.write_text(path, text)
    return Outcome(path, verdict, findings, problems)


def _settings(reproduction: Reproduction, scale: Scale, data: str) -> str:
    base = {"data": data, **reproduction.base, **scale.base()}
    return ", ".join(f"{k} {v}" for k, v in base.items()) + f"; {scale.seeds} seed(s)"


def document(
    reproduction: Reproduction,
    findings: Findings,
    verdict: str,
    rows: list[dict],
    problems: list[str],
    scale: Scale,
    sweep_seconds: float,
    max_parallel: int,
    command: str,
    out: Path,
    data: str,
    ran: int,
) -> str:
    """The markdown of a reproduction's result document."""
    run_seconds = sum(r.get("wall_seconds") or 0.0 for r in rows)
    mean = run_seconds / max(len(rows), 1)
    invocation = (
        f"This invocation ran {ran} run(s) in {sweep_seconds / 60:.1f} min."
        if ran
        else "This invocation found every run finished and redid the analysis only."
    )
    lines = [
        f"# {reproduction.title}",
        "",
        f"**Verdict: {verdict}** (from the numbers below; every claim must hold for 'reproduced').",
        "",
        f"Source: {reproduction.source}. Claim: {reproduction.statement}",
        "",
        f"Regenerate: `{command}` (then the sweep folder holds every run; finished runs are "
        "reused, so rerunning only redoes the analysis).",
        "",
        f"Scale: {reproduction.settings}; {_settings(reproduction, scale, data)}.",
        "",
        "| claim | measured | verdict |",
        "|---|---|---|",
        *(f"| {cl.text} | {cl.measured} | {cl.verdict} |" for cl in findings.claims),
        "",
        "Rules: A > B holds when the difference of the means exceeds twice its standard error "
        "(partly when only its sign is right); A ≥ B when A is not below B by more than that; "
        "A ≈ B when they differ by at most the larger of that and the stated tolerance.",
        "",
    ]
    for block in findings.body:
        lines += [block, ""]
    for figure in findings.figures:
        relative = figure.relative_to(out) if figure.is_relative_to(out) else figure
        lines += [f"![{figure.stem}]({relative})", ""]
    if problems:
        lines += ["Runs not used:", "", *(f"- {p}" for p in problems), ""]
    lines += [
        f"{len(rows)} finished runs, {run_seconds / 60:.1f} min of training in all ({mean:.0f} s "
        f"per run, each run's wall time from start to summary), measured with "
        f"{job_threads(max_parallel)} thread(s) per run on {platform.machine()} "
        f"({os.cpu_count()} cores), torch {torch.__version__}; with {max_parallel} run(s) at a "
        f"time the sweep takes about {run_seconds / 60 / max_parallel:.0f} min. {invocation}",
        "",
    ]
    return "\n".join(lines)
