"""The ``normlab`` command line: ``schemes``, ``moments``, argument errors, ``--version``, and
its one error boundary: every mistake one line on stderr with exit code 2, bugs exit code 1,
interrupts 130, ``--debug`` the traceback (``demo`` and ``analyze`` are tested in
tests/test_demo.py and tests/test_analyze.py)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import normlab
from normlab.cli import main
from normlab.training.command import FLAG_TYPES
from normlab.training.config import ConfigError, TrainConfig

from .console_batch import run_console_batch

SRC = Path(__file__).parents[1] / "src"

EXAMPLE_SPECS = ["bn", "gn8", "frn", "evo-s0", "none", "nf", "gn8+pn", "bn+sws"]


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_schemes_lists_every_form(capsys):
    code, out = run(capsys, "schemes")
    assert code == 0
    forms = [f.form for f in normlab.schemes()]
    assert len(forms) == 18
    for form in forms:
        assert form in out
    assert "example specs" not in out


def test_schemes_examples(capsys):
    code, out = run(capsys, "schemes", "--examples")
    assert code == 0
    for form in normlab.schemes():
        assert form.form in out
    assert "example specs" in out
    for spec in EXAMPLE_SPECS:
        assert spec in out
    # Each example is built: the layers it makes are named.
    for name in ("ScaledWSConv2d", "NormAct(ProxyNormAct)", "NormAct(TLU)", "GainedAct"):
        assert name in out


def test_python_dash_m_normlab():
    result = subprocess.run(
        [sys.executable, "-m", "normlab", "schemes"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "gn/<S>" in result.stdout
    assert "evo-s0/<S>" in result.stdout


def test_moments_lists_exact_and_reference_moments_and_gains(capsys):
    code, out = run(capsys, "moments")
    assert code == 0
    for name in normlab.layers.activation_names():
        assert name in out
    assert "1.712859" in out  # relu's exact gain sqrt(2 / (1 - 1/π))


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["schemes", "--bogus"], ["demo", "-x"]])
def test_bad_arguments_exit_2_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert ": error: " in err
    assert "--help" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.strip() == f"normlab {normlab.__version__}"
    # The package's version agrees with the installed distribution's metadata.
    assert normlab.__version__ == importlib.metadata.version("normlab")


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "schemes" in out
    assert "demo" in out


@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu0", "unknown device 'gpu0'"), ("meta", "device 'meta' is not available here")],
)
def test_bad_devices_are_clear_errors(device, message, capsys):
    assert main(["demo", "--quick", "--device", device]) == 2
    assert message in capsys.readouterr().err


# -- the error boundary, on the real console script ------------------------------------------


def normlab_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m normlab ARGV`` in a subprocess, on this checkout's sources."""
    env = os.environ | {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "normlab", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


BAD_VALUES = [
    (["demo", "--width", "0"], ["normlab demo: error:", "--width", "positive integer"]),
    (["demo", "--depth", "-1"], ["--depth", "positive integer", "'-1'"]),
    (["demo", "--width", "inf"], ["--width", "positive integer", "'inf'"]),
    (["demo", "--width", "nan"], ["--width", "'nan'"]),
    (["models", "--act", "bogus"], ["normlab models: error:", "'bogus'", "Did you mean"]),
]
ANALYZE_OUT = ["analyze", "--model", "resnet20", "--data", "gaussian:3x8x8", "--out"]
TINY_TRAIN = ["--model", "resnet20", "--width", "0.25", "--data", "gaussian:3x8x8", "--limit", "8",
              "--test-limit", "8", "--batch-size", "8"]  # fmt: skip
DAMAGES = ["garbage", "truncated"]


def _damaged(damage: str) -> bytes:
    if damage == "garbage":
        return b"\x00garbage, not a checkpoint" * 10
    stream = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 0}, stream)
    return stream.getvalue()[: len(stream.getvalue()) // 2]


@pytest.fixture(scope="module")
def console(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """This section's command lines, each in its own folder, run through the real console entry
    all in one subprocess (tests/console_batch.py: one torch import instead of ten). The
    console's own process is still tested here: ``test_python_dash_m_normlab`` and one of
    ``test_debug_shows_the_traceback_before_or_after_the_command``'s runs are processes of their
    own. Maps a probe's name to its result and its folder."""
    probes: dict[str, tuple[list[str], Path]] = {}

    def folder(name: str) -> Path:
        return tmp_path_factory.mktemp(name)

    for argv, _ in BAD_VALUES:
        probes[" ".join(argv)] = (argv, folder("bad-value"))
    out = folder("out")
    (out / "file").write_text("not a folder")
    probes["out-file"] = ([*ANALYZE_OUT, str(out / "file")], out)
    probes["out-under-file"] = ([*ANALYZE_OUT, str(out / "file" / "sub")], out)
    for damage in DAMAGES:
        run = folder(f"resume-{damage}") / "run"
        run.mkdir()
        (run / "last.pt").write_bytes(_damaged(damage))
        argv = ["train", *TINY_TRAIN, "--out", str(run), "--resume", "--no-progress"]
        probes[f"resume-{damage}"] = (argv, run.parent)
    debug = folder("debug-after")
    (debug / "file").write_text("x")
    probes["debug-after"] = (["demo", "--out", str(debug / "file"), "--debug"], debug)
    results = run_console_batch(list(probes.values()), folder("batch") / "results.json")
    return {name: (result, probes[name][1]) for name, result in zip(probes, results, strict=True)}


@pytest.mark.parametrize(("argv", "fragments"), BAD_VALUES)
def test_bad_values_are_one_line_errors(argv, fragments, console):
    assert_one_line_error(console[" ".join(argv)][0], *fragments)


def test_out_that_cannot_hold_a_report_fails_before_any_work(console):
    result, folder = console["out-file"]
    file = folder / "file"
    line = assert_one_line_error(result, "normlab analyze: error:")
    assert f"--out {file} exists and is not a folder" in line
    # A folder cannot be made under a regular file (NotADirectoryError), even for root.
    result, _ = console["out-under-file"]
    line = assert_one_line_error(result, f"--out {file}/sub")
    assert f"{file} is a file, not a folder" in line
    assert file.read_text() == "not a folder"
    assert sorted(p.name for p in folder.iterdir()) == ["file"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_from_a_corrupt_checkpoint_is_a_one_line_error(damage, console):
    result, folder = console[f"resume-{damage}"]
    assert_one_line_error(result, "normlab train: error:", "last.pt is not a readable")
    assert (folder / "run" / "last.pt").read_bytes() == _damaged(damage)
    assert sorted(p.name for p in (folder / "run").iterdir()) == ["last.pt"]


def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path, console):
    file = tmp_path / "file"
    file.write_text("x")
    before = normlab_cli("--debug", "demo", "--out", str(file))  # a process of its own
    after, _ = console["debug-after"]
    for result in (before, after):
        assert result.returncode == 1
        assert "Traceback" in result.stderr
        assert "ValueError: --out" in result.stderr


# -- the boundary in process -----------------------------------------------------------------


def _raise(error: BaseException):
    def command(args, console):
        raise error

    return command


@pytest.mark.parametrize(
    ("error", "code", "fragment"),
    [
        (OSError(28, "No space left on device", "out/metrics.json"), 2, "No space left on device"),
        (PermissionError(13, "Permission denied", "/x"), 2, "Permission denied: /x"),
        (TypeError("width must be a number"), 2, "width must be a number"),
        (ConfigError("epochs must be\na positive integer"), 2, "epochs must be a positive"),
        (EOFError("Ran out of input"), 2, "corrupt or truncated (EOFError: Ran out of input)"),
        (RuntimeError("boom"), 1, "bug in normlab"),
        (KeyError("p1"), 1, "KeyError: 'p1'; rerun with --debug"),
        (KeyboardInterrupt(), 130, "normlab moments: interrupted"),
    ],
)
def test_every_exception_becomes_one_line_and_an_exit_code(
    error, code, fragment, monkeypatch, capsys
):
    monkeypatch.setattr("normlab.cli.cmd_moments", _raise(error))
    assert main(["moments"]) == code
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("normlab moments: ")
    assert fragment in err
    if code == 2:
        assert err.startswith("normlab moments: error: ")


def test_debug_re_raises(monkeypatch):
    monkeypatch.setattr("normlab.cli.cmd_moments", _raise(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        main(["moments", "--debug"])


@pytest.mark.parametrize(
    "argv",
    [
        ["analyze", "--model", "resnet20", "--samples", "0"],
        ["analyze", "--model", "resnet20", "--batch-size", "-8"],
        ["analyze", "--model", "resnet20", "--width", "0"],
        ["analyze", "--model", "resnet20", "--width", "inf"],
        ["analyze", "--model", "resnet20", "--width", "nan"],
        ["train", "--epochs", "0"],
        ["train", "--lr", "-1"],
        ["train", "--lr", "nan"],
        ["train", "--width", "inf"],
        ["train", "--momentum", "1"],
        ["train", "--milestones", "0.5", "1.5"],
        ["train", "--seed", "-1"],
    ],
)
def test_numeric_flags_refuse_values_out_of_range(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    flag = next(a for a in argv if a.startswith("--") and a != "--model")
    assert f"argument {flag}: must be " in err


def test_train_flags_accept_what_the_config_accepts():
    """Every numeric TrainConfig key has a range-checked flag, and the flag's range is the one
    TrainConfig.validate applies to a config file."""
    numeric = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if any(t in str(f.type) for t in ("int", "float")) and f.name != "extra"
    ]
    assert sorted(numeric) == sorted(FLAG_TYPES)
    for name, parse in FLAG_TYPES.items():
        for text in ("-1", "0", "0.5", "1", "3", "inf", "nan"):
            try:
                value = parse(text)
                flag_ok = True
            except Exception:
                flag_ok = False
            value = int(text) if text.lstrip("-").isdigit() else float(text)
            config = TrainConfig(epochs=100, batch_size=96)
            value = (value,) if name == "milestones" else value
            try:
                dataclasses.replace(config, **{name: value}).validate()
                config_ok = True
            except ConfigError:
                config_ok = False
            assert flag_ok == config_ok, (name, text)
