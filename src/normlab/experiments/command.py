"""``normlab sweep`` and ``normlab table`` on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._argtypes import positive_int
from ..training.config import ConfigError
from .grid import expand, load_grid
from .presets import PRESETS, preset
from .reproduce import get, reproduce
from .reproductions import REPRODUCTIONS
from .sweep import EXECUTORS, plan, run_sweep
from .table import METRICS, write_table


def _key_values(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def _slurm_parameters(items: list[str]) -> dict[str, object]:
    parameters: dict[str, object] = {}
    for key, value in _key_values(items, "--slurm").items():
        parameters[key] = int(value) if value.isdigit() else value
    return parameters


def cmd_sweep(args: argparse.Namespace, console) -> int:
    if (args.grid is None) == (args.preset is None):
        raise ConfigError("give a grid file or --preset NAME (one of them)")
    if args.preset:
        folder, runs = expand(preset(args.preset, args.data), args.out or f"runs/{args.preset}")
    else:
        folder, runs = load_grid(args.grid, args.out)
    if args.dry_run:
        for state in plan(runs):
            console.print(f"{state.status:9s} {folder / state.run.name}", highlight=False)
        console.print(f"{len(runs)} runs in {folder} (dry run: nothing started)")
        return 0
    entries = run_sweep(
        folder,
        runs,
        args.executor,
        args.max_parallel,
        _slurm_parameters(args.slurm),
        on_event=lambda line: console.print(line, highlight=False),
    )
    counts = {s: sum(e["status"] == s for e in entries) for s in {e["status"] for e in entries}}
    console.print(f"sweep {folder}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0 if set(counts) <= {"finished", "diverged"} else 1


def cmd_table(args: argparse.Namespace, console) -> int:
    where = _key_values(args.where, "--where")
    table, notes = write_table(args.folder, args.out, args.rows, args.cols, args.metric, where)
    console.print(table.markdown(), highlight=False, soft_wrap=True)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True)
    out = Path(args.out or args.folder)
    console.print(f"written: {out}/table.md, table.csv, train_table.md, results.csv, table.png")
    return 0


def cmd_reproduce(args: argparse.Namespace, console) -> int:
    if args.list:
        for name, reproduction in REPRODUCTIONS.items():
            console.print(f"{name:18s} {reproduction.title}", highlight=False)
        return 0
    if args.name is None:
        raise ConfigError(
            f"give the reproduction to run (one of {', '.join(REPRODUCTIONS)}), or --list to "
            f"list them"
        )
    get(args.name)  # an unknown name: the closest one suggested
    if not args.data:
        raise ConfigError(
            f"normlab reproduce {args.name} needs --data, e.g. "
            "fashion-mnist:../shared/data/fashion-mnist (or cifar10:DIR)"
        )
    command = f"normlab reproduce {args.name} --data {args.data}"
    if args.max_parallel != 1:
        command += f" --max-parallel {args.max_parallel}"
    outcome = reproduce(
        args.name,
        args.data,
        args.runs,
        args.out,
        args.max_parallel,
        command=command,
        on_event=lambda line: console.print(line, highlight=False),
    )
    for claim in outcome.findings.claims:
        console.print(f"{claim.verdict:13s} {claim.text}: {claim.measured}", highlight=False)
    for problem in outcome.problems:
        console.print(problem, highlight=False)
    console.print(f"verdict: {outcome.verdict}; written: {outcome.document}", highlight=False)
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser("sweep", help="run a grid of trainings (submitit, resumable)")
    sweep.add_argument("grid", nargs="?", help="the grid YAML file (base, grid, cases, out)")
    sweep.add_argument("--preset", help=f"a paper's grid instead: {', '.join(PRESETS)}")
    sweep.add_argument("--data", help="data spec for --preset")
    sweep.add_argument("--out", help="sweep folder (default: the grid's out)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and their state")
    sweep.add_argument("--executor", choices=EXECUTORS, default="local", help="submitit executor")
    sweep.add_argument("--max-parallel", type=positive_int, default=1, help="jobs at a time")
    sweep.add_argument(
        "--slurm",
        action="append",
        metavar="KEY=VALUE",
        help="a submitit Slurm parameter, e.g. slurm_partition=gpu timeout_min=600 "
        "gpus_per_node=1 cpus_per_task=8 (repeat the flag)",
    )
    sweep.set_defaults(run=cmd_sweep)
    table = commands.add_parser("table", help="the papers' tables from a folder of runs")
    table.add_argument("folder", help="a folder of runs (a sweep folder)")
    table.add_argument("--rows", default="norm", help="config key of the rows (norm)")
    table.add_argument("--cols", default="model", help="config key of the columns (model)")
    table.add_argument("--metric", default="final_test_accuracy", choices=METRICS, help="metric")
    table.add_argument("--where", action="append", metavar="KEY=VALUE", help="select runs")
    table.add_argument("--out", help="where to write the tables (default: the folder)")
    table.set_defaults(run=cmd_table)
    again = commands.add_parser(
        "reproduce", help="run a paper claim's sweep at CPU scale and write its verdict"
    )
    again.add_argument("name", nargs="?", help=f"the reproduction: {', '.join(REPRODUCTIONS)}")
    again.add_argument("--list", action="store_true", help="list the reproductions")
    again.add_argument("--data", help="data spec, e.g. fashion-mnist:../shared/data/fashion-mnist")
    again.add_argument("--runs", default="runs", help="parent of the sweep folder (runs)")
    again.add_argument("--out", default="docs/results", help="where the document goes")
    again.add_argument("--max-parallel", type=positive_int, default=1, help="runs at a time")
    again.set_defaults(run=cmd_reproduce)
