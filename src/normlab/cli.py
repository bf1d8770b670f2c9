"""The ``normlab`` command line: ``demo``, ``analyze``, ``models``, ``schemes``, ``moments``,
``train``, ``sweep``, ``table``, ``reproduce``, ``plot``.

:func:`main` is the one error boundary of every command. A mistake (a bad flag or value, a
missing or unwritable file, a corrupt checkpoint, ...) prints one line on stderr,
``normlab COMMAND: error: MESSAGE``, and exits with 2; an interrupt (Ctrl-C) exits with 130; an
unexpected exception (a bug) prints one line naming it and exits with 1. ``--debug``, before or
after the command (``normlab --debug demo`` or ``normlab demo --debug``), shows the full
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import typing
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

if typing.TYPE_CHECKING:
    from . import report

from . import __version__, models
from ._argtypes import integer, number, positive_int
from ._checks import check_device as _check_device
from ._files import check_output_path
from .data import SPEC_FORMS
from .experiments.command import add_parsers as add_experiment_parsers
from .layers import (
    PUBLISHED_GAINS,
    activation_gain,
    activation_names,
    get_activation,
    proxy_moments,
)
from .models._common import MAX_WIDTH
from .models.random_net import MAX_DEPTH as RANDOM_NET_MAX_DEPTH
from .models.random_net import MAX_WIDTH as RANDOM_NET_MAX_WIDTH
from .scheme import EXAMPLES, scheme, schemes
from .training.command import add_parser as add_train_parser

widths = number(low=0.0, high=MAX_WIDTH, low_open=True)


def _schemes_table() -> Table:
    table = Table(title="normlab scheme grammar: a normalizer, then modifiers joined by '+'")
    table.add_column("form", style="bold cyan")
    table.add_column("description")
    for form in schemes():
        table.add_row(form.form, form.description)
    return table


def _examples_table() -> Table:
    table = Table(title="example specs")
    for column in ("spec", "conv", "norm_act", "description"):
        table.add_column(column)
    for spec in EXAMPLES:
        parsed = scheme(spec)
        conv = type(parsed.conv(16, 16, 3)).__name__
        norm_act = parsed.norm_act(16)
        inner = getattr(norm_act, "act", None)
        kind = type(norm_act).__name__ + (f"({type(inner).__name__})" if inner is not None else "")
        table.add_row(parsed.spec, conv, kind, parsed.describe())
    return table


def cmd_schemes(args: argparse.Namespace, console: Console) -> int:
    console.print(_schemes_table())
    if args.examples:
        console.print(_examples_table())
    return 0


def _moments_table() -> Table:
    table = Table(title="moments of φ(Y), Y ~ N(0,1): exact vs the reference estimator (K=200)")
    table.add_column("φ", no_wrap=True)
    for column in ("E", "Var", "E ref.", "Var ref.", "γ_φ", "γ_φ publ."):
        table.add_column(column, overflow="fold")
    one = torch.ones((), dtype=torch.float64)
    for name in activation_names():
        mean, var = proxy_moments(name, one, 0.0)
        ref_mean, ref_var = proxy_moments(name, one, 0.0, method="reference")
        table.add_row(
            name,
            f"{float(mean):.6f}",
            f"{float(var):.6f}",
            f"{float(ref_mean):.6f}",
            f"{float(ref_var):.6f}",
            f"{activation_gain(name):.6f}",
            f"{PUBLISHED_GAINS.get(get_activation(name).name, float('nan')):.6f}",
        )
    return table


def cmd_moments(args: argparse.Namespace, console: Console) -> int:
    console.print(_moments_table())
    return 0


def _checks_table(checks: list[dict]) -> Table:
    from .report.html import format_value

    table = Table(title="checks of the papers' claims")
    table.add_column("")
    table.add_column("claim", ratio=3, overflow="fold")
    table.add_column("measured", ratio=1, overflow="fold")
    table.add_column("expected", ratio=1, overflow="fold")
    for check in checks:
        mark = "[green]pass[/]" if check["passed"] else "[red]FAIL[/]"
        table.add_row(mark, check["claim"], format_value(check["measured"]), check["expected"])
    return table


def _finish_report(files: report.ReportFiles, console: Console) -> int:
    """Print the checks and where the report is; 1 if a check failed."""
    checks = json.loads(files.metrics.read_text(encoding="utf-8"))["checks"]
    if checks:
        console.print(_checks_table(checks))
    failed = [c for c in checks if not c["passed"]]
    if not checks:
        verdict = "no theorem's check applies to this model and scheme (measurements only)"
    elif failed:
        verdict = f"[red]{len(failed)} of {len(checks)} checks FAILED[/]"
    else:
        verdict = f"[green]all {len(checks)} checks passed[/]"
    console.print(f"{verdict}\nreport: [bold]{files.html}[/] (figures and metrics.json beside it)")
    return 1 if failed else 0


def check_device(name: str) -> str:
    """The device name if torch can run there, else a ValueError saying why
    (:func:`normlab._checks.check_device`)."""
    _check_device(name)
    return name


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    )


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from .demo import DemoConfig, run_demo
    from .demo.run import ANALYSES
    from .report import check_report_folder

    out = check_report_folder(args.out, "--out")
    config = DemoConfig.quick(out) if args.quick else DemoConfig(out)
    sizes = (("width", args.width), ("depth", args.depth))
    overrides = {key: value for key, value in sizes if value is not None}
    overrides["device"] = check_device(args.device)
    config = replace(config, **overrides)
    console.print(
        f"[bold]normlab {__version__} demo[/]: the papers' claims measured on white "
        f"noise{' (quick)' if args.quick else ''}, report in {out}/"
    )
    with _progress(console) as progress:
        task = progress.add_task("starting", total=len(ANALYSES))

        def step(index: int, description: str) -> None:
            progress.update(task, completed=index, description=description)

        files = run_demo(config, on_step=step)
        progress.update(task, completed=len(ANALYSES), description="report written")
    return _finish_report(files, console)


def cmd_analyze(args: argparse.Namespace, console: Console) -> int:
    from .analyze import AnalyzeConfig, run_analyze
    from .report import check_report_folder

    check_report_folder(args.out, "--out")
    config = AnalyzeConfig(
        model=args.model,
        norm=args.norm,
        act=args.act,
        data=args.data,
        out=Path(args.out),
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        samples=args.samples,
        batch_size=args.batch_size,
        mode=args.mode,
        width=args.width,
        device=check_device(args.device),
    )
    with console.status(f"analyzing {config.model} ({config.norm}) on {config.data}..."):
        files = run_analyze(config)
    return _finish_report(files, console)


def _models_table(args: argparse.Namespace) -> tuple[Table, list[str]]:
    if args.norm is None:
        title = "normlab models, each under its default scheme (bn; nf for the NF-ResNets)"
    else:
        title = f"normlab models under scheme {scheme(args.norm, args.act).spec!r}"
    title += f", act={args.act}" if args.act else ""
    table = Table(title=title)
    for column in ("model", "family", "input", "params"):
        table.add_column(column, justify="right" if column == "params" else "left")
    if args.flops:
        table.add_column("MACs (conv + linear)", justify="right")
    problems = []
    for name in args.names or models.names():
        entry = models.info(name)
        kwargs = {"norm": args.norm} if args.norm else {}
        kwargs |= {"act": args.act} if args.act else {}
        try:
            model = models.create(name, **kwargs)
        except ValueError as error:
            problems.append(f"{name}: {error}")
            table.add_row(name, entry.family, str(entry.input_size), "—", *["—"] * args.flops)
            continue
        row = [name, entry.family, str(entry.input_size), f"{models.count_params(model):,}"]
        if args.flops:
            row.append(f"{models.count_macs(model, entry.input_size) / 1e6:,.1f}M")
        table.add_row(*row)
    return table, problems


def cmd_models(args: argparse.Namespace, console: Console) -> int:
    for name in args.names:
        models.info(name)  # unknown names fail before any model is built
    if args.act is not None:
        get_activation(args.act)  # an unknown activation: the closest one suggested
    if args.norm is not None:
        scheme(args.norm, args.act)  # an unknown scheme: its valid forms listed
    table, problems = _models_table(args)
    console.print(table)
    if args.flops:
        console.print(
            "MACs: multiply-accumulates of the convolutions and linear layers for one sample at "
            "the model's input size (what the papers call FLOPs); normalizations, activations "
            "and pooling are not counted."
        )
    for problem in problems:
        console.print(f"[yellow]not built:[/] {problem}")
    return 0


def cmd_plot(args: argparse.Namespace, console: Console) -> int:
    from .report.training import plot_runs

    out = check_output_path(args.out or Path(args.runs[0]) / "plots", "--out")
    written = plot_runs(args.runs, out)
    console.print(f"wrote {len(written)} files in {out}: " + ", ".join(p.name for p in written))
    return 0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``normlab demo: error: MESSAGE``."""

    def error(self, message: str) -> typing.NoReturn:
        line = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {line} (see {self.prog} --help)\n")


DEBUG_HELP = "on an error, show the full traceback (before or after the command)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="normlab",
        description="Normalization layers of deep networks, and the diagnostics that explain them.",
        epilog="Exit codes: 0 done, 1 a check failed or a run diverged (or a bug), 2 a mistake "
        "in the input (one line on stderr), 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"normlab {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.commands = commands
    listing = commands.add_parser("schemes", help="list the spec grammar of normalization schemes")
    listing.add_argument("--examples", action="store_true", help="also build and list examples")
    listing.set_defaults(run=cmd_schemes)
    demo = commands.add_parser(
        "demo", help="the main job: the papers' claims measured on white noise, with a report"
    )
    demo.add_argument("--out", default="normlab-report", help="report directory")
    demo.add_argument("--quick", action="store_true", help="a small run (under a minute)")
    demo.add_argument(
        "--width",
        type=integer(1, RANDOM_NET_MAX_WIDTH),
        help="random-net width (default 256; paper: 1024)",
    )
    demo.add_argument(
        "--depth", type=integer(1, RANDOM_NET_MAX_DEPTH), help="random-net depth (default 50)"
    )
    demo.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, ...")
    demo.set_defaults(run=cmd_demo)
    analyze = commands.add_parser("analyze", help="the analyses on one model and a data set")
    analyze.add_argument("--model", required=True, help="a model of `normlab models`")
    analyze.add_argument("--norm", default="bn", help="normalization scheme spec (default bn)")
    analyze.add_argument("--act", default="relu", help="activation φ (default relu)")
    analyze.add_argument("--data", default="gaussian", help=f"data spec: {SPEC_FORMS}")
    analyze.add_argument("--checkpoint", help="a state dict saved with torch.save")
    analyze.add_argument("--out", default="normlab-analyze", help="report directory")
    analyze.add_argument(
        "--samples", type=positive_int, default=256, help="training inputs analyzed"
    )
    analyze.add_argument("--batch-size", type=positive_int, default=64, help="batch size")
    analyze.add_argument(
        "--mode",
        choices=("train", "eval"),
        help="batch or running statistics (default: eval with a checkpoint)",
    )
    analyze.add_argument(
        "--width", type=widths, default=1.0, help=f"model width multiplier, in (0, {MAX_WIDTH:g}]"
    )
    analyze.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, ...")
    analyze.set_defaults(run=cmd_analyze)
    moments = commands.add_parser(
        "moments", help="exact proxy moments vs the reference estimator, and the gains γ_φ"
    )
    moments.set_defaults(run=cmd_moments)
    zoo = commands.add_parser("models", help="list the model zoo with parameter counts")
    zoo.add_argument("names", nargs="*", help="models to list (default: all)")
    zoo.add_argument("--norm", help="normalization scheme spec (default: each model's own)")
    zoo.add_argument("--act", default=None, help="activation φ (default: each model's own)")
    zoo.add_argument("--flops", action="store_true", help="also count multiply-accumulates")
    zoo.set_defaults(run=cmd_models)
    add_train_parser(commands)
    add_experiment_parsers(commands)
    plot = commands.add_parser(
        "plot", help="figures of training runs: power through training, training curves"
    )
    plot.add_argument("runs", nargs="+", help="run folders of `normlab train` (several overlay)")
    plot.add_argument("--out", help="figure folder (default: RUN/plots of the first run)")
    plot.set_defaults(run=cmd_plot)
    for command in commands.choices.values():
        # SUPPRESS: the flag after the command does not reset the one given before it
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
    return parser


# Mistakes in the input, reported in one line with exit code 2: normlab's own errors (ValueError
# subclasses), bad arguments, the files (missing, unwritable, a full disk, not a folder) and files
# that cannot be unpickled (corrupt or truncated). Anything else is a bug.
INPUT_ERRORS = (
    ValueError,
    TypeError,
    OSError,
    pickle.UnpicklingError,
    EOFError,
    zipfile.BadZipFile,
)
OUT_OF_MEMORY = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


def describe(error: BaseException) -> str:
    """The error as one line of text."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
        if error.filename is not None:
            text += f": {error.filename}"
        if error.filename2 is not None:
            text += f" -> {error.filename2}"
    elif isinstance(error, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile)):
        text = f"a file that looks corrupt or truncated ({type(error).__name__}: {error})"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _check_out(args: argparse.Namespace) -> None:
    """Refuse, before the command runs, an ``--out`` that cannot be written (a file, a path
    under a file, a read-only folder); the commands that write a report check it further."""
    out = getattr(args, "out", None)
    if out is not None and not getattr(args, "list", False) and not getattr(args, "dry_run", 0):
        check_output_path(out, "--out")


def _run(args: argparse.Namespace) -> int:
    _check_out(args)
    return args.run(args, Console())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (see the module's docstring)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's own parser: "normlab train: error: ..."
        command = parser.commands.choices.get(args.command, parser)
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.debug:
        return _run(args)
    name = f"normlab {args.command}"
    try:
        return _run(args)
    except KeyboardInterrupt:
        _say(f"{name}: interrupted")
        return 130
    except BrokenPipeError:  # the output's reader went away (normlab models | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:
        if not is_out_of_memory(error):
            return _fail(name, error)
        _say(
            f"{name}: error: out of memory ({describe(error)[:200]}); use smaller sizes "
            "(--batch-size, --width, --samples, ...)"
        )
        return 2


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says that memory ran out: Python's MemoryError, torch's
    OutOfMemoryError (CUDA), and the RuntimeError torch's CPU allocator raises
    ("DefaultCPUAllocator: can't allocate memory: you tried to allocate ... bytes"), which a
    width or batch size too large for the machine gives."""
    if isinstance(error, OUT_OF_MEMORY):
        return True
    return isinstance(error, RuntimeError) and any(
        words in str(error) for words in ("can't allocate memory", "DefaultCPUAllocator")
    )


def _fail(name: str, error: Exception) -> int:
    if isinstance(error, INPUT_ERRORS):
        _say(f"{name}: error: {describe(error)}")
        return 2
    _say(
        f"{name}: internal error, a bug in normlab (please report it): "
        f"{type(error).__name__}: {describe(error)}; rerun with --debug for the traceback"
    )
    return 1


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
