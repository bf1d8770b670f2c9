"""Every subcommand's arguments at their edges. The error boundary is one function
(``normlab.cli.main``), so most probes call it in this process; a selection runs the real
console entry (``python -m normlab``) in subprocesses, several at a time: exit code 2, exactly one
line on stderr naming the command, the argument and the valid range or choices, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normlab.cli import main

TINY = ["--width", "0.25", "--data", "gaussian:3x8x8", "--limit", "8", "--test-limit", "8",
        "--batch-size", "8", "--no-progress"]  # fmt: skip
ANALYZE = ["analyze", "--model", "resnet20", "--data", "gaussian:3x8x8", "--samples", "8",
           "--batch-size", "8", "--width", "0.25"]  # fmt: skip

# (argv, fragments of the one stderr line); files: "FILE" is a regular file, "GARBAGE" a
# corrupt checkpoint, "LIST" a YAML list, "EMPTY" an empty folder (made in the test's folder)
CASES = {
    # the parser itself
    "no-command": ([], ["normlab: error:", "required: COMMAND"]),
    "unknown-command": (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    "schemes-bogus-flag": (["schemes", "--bogus"], ["unrecognized arguments: --bogus"]),
    "schemes-flag-value": (["schemes", "--examples=1"], ["--examples: ignored explicit argument '1'"]),
    "moments-extra": (["moments", "extra"], ["unrecognized arguments: extra"]),
    # demo
    "demo-width-0": (["demo", "--width", "0"], ["--width: must be a positive integer (1 to 8192), got '0'"]),
    "demo-width-neg": (["demo", "--width", "-3"], ["--width", "got '-3'"]),
    "demo-width-nan": (["demo", "--width", "nan"], ["--width", "got 'nan'"]),
    "demo-width-float": (["demo", "--width", "1.5"], ["--width", "got '1.5'"]),
    "demo-width-huge": (["demo", "--width", "10" * 15], ["--width", "(1 to 8192)"]),
    "demo-depth-huge": (["demo", "--depth", "100000000"], ["--depth: must be a positive integer (1 to 10000)"]),
    "demo-depth-word": (["demo", "--depth", "deep"], ["--depth", "got 'deep'"]),
    "demo-device-meta": (["demo", "--quick", "--device", "meta"], ["device 'meta' is not available here"]),
    "demo-device-bogus": (["demo", "--quick", "--device", "gpu0"], ["unknown device 'gpu0'", "cpu, cuda"]),
    "demo-device-empty": (["demo", "--quick", "--device", ""], ["unknown device ''"]),
    "demo-out-file": (["demo", "--quick", "--out", "FILE"], ["exists and is not a folder"]),
    # analyze
    "analyze-no-model": (["analyze"], ["required: --model"]),
    "analyze-model": (["analyze", "--model", "resnet21"], ["unknown model 'resnet21'", "Did you mean"]),
    "analyze-samples-0": ([*ANALYZE, "--samples", "0"], ["--samples: must be a positive integer"]),
    "analyze-samples-float": ([*ANALYZE, "--samples", "1.5"], ["--samples", "got '1.5'"]),
    "analyze-batch-neg": ([*ANALYZE, "--batch-size", "-8"], ["--batch-size", "got '-8'"]),
    "analyze-width-0": ([*ANALYZE, "--width", "0"], ["--width: must be a finite number in (0, 64]"]),
    "analyze-width-inf": ([*ANALYZE, "--width", "inf"], ["--width", "got 'inf'"]),
    "analyze-width-nan": ([*ANALYZE, "--width", "nan"], ["--width", "got 'nan'"]),
    "analyze-width-huge": ([*ANALYZE, "--width", "1e9"], ["--width", "got '1e9'"]),
    "analyze-mode": ([*ANALYZE, "--mode", "test"], ["--mode: invalid choice: 'test'", "'train', 'eval'"]),
    "analyze-device": ([*ANALYZE, "--device", "meta"], ["device 'meta' is not available here"]),
    "analyze-data": ([*ANALYZE, "--data", "imagenet"], ["unknown dataset 'imagenet'"]),
    "analyze-shape": ([*ANALYZE, "--data", "gaussian:3x8"], ["the gaussian shape must be CxHxW"]),
    "analyze-norm": ([*ANALYZE, "--norm", "gn8+pm"], ["unknown scheme 'gn8+pm'", "Did you mean 'gn8+pn'?"]),
    "analyze-act": ([*ANALYZE, "--act", "rleu"], ["unknown activation 'rleu'", "Did you mean 'relu'?"]),
    "analyze-no-checkpoint": ([*ANALYZE, "--checkpoint", "none.pt"], ["checkpoint 'none.pt' does not exist"]),
    "analyze-bad-checkpoint": ([*ANALYZE, "--checkpoint", "GARBAGE"], ["is not a readable torch.save file"]),
    "analyze-one-sample": ([*ANALYZE, "--samples", "1", "--batch-size", "1"], ["at least 2 inputs"]),
    "analyze-out-file": ([*ANALYZE, "--out", "FILE"], ["--out FILE exists and is not a folder"]),
    "analyze-out-under-file": ([*ANALYZE, "--out", "FILE/sub"], ["FILE is a file, not a folder"]),
    # models
    "models-name": (["models", "resnet-20"], ["unknown model 'resnet-20'", "Did you mean 'resnet20'?"]),
    "models-norm": (["models", "--norm", "batchnorm"], ["unknown scheme 'batchnorm'", "Did you mean 'bn'?"]),
    "models-norm-empty": (["models", "--norm", ""], ["unknown scheme ''"]),
    "models-act": (["models", "--act", "bogus"], ["unknown activation 'bogus'"]),
    # train
    "train-epochs-0": (["train", "--epochs", "0"], ["--epochs: must be a positive integer"]),
    "train-epochs-float": (["train", "--epochs", "1e3"], ["--epochs", "got '1e3'"]),
    "train-lr-neg": (["train", "--lr", "-1"], ["--lr: must be a finite number in (0, inf)"]),
    "train-lr-nan": (["train", "--lr", "nan"], ["--lr", "got 'nan'"]),
    "train-lr-inf": (["train", "--lr", "inf"], ["--lr", "got 'inf'"]),
    "train-width": (["train", "--width", "65"], ["--width: must be a finite number in (0, 64]"]),
    "train-momentum": (["train", "--momentum", "1"], ["--momentum: must be a finite number in [0, 1)"]),
    "train-milestones": (["train", "--milestones", "0.5", "1.5"], ["--milestones", "got '1.5'"]),
    "train-milestones-none": (["train", "--milestones"], ["--milestones: expected at least one"]),
    "train-seed": (["train", "--seed", "-1"], ["--seed: must be a non-negative integer"]),
    "train-batch-0": (["train", "--batch-size", "0"], ["--batch-size: must be a positive integer"]),
    "train-ema": (["train", "--ema", "1"], ["--ema: must be a finite number in (0, 1)"]),
    "train-optimizer": (["train", *TINY, "--optimizer", "adam"], ["unknown optimizer 'adam'", "sgd, adamw"]),
    "train-schedule": (["train", *TINY, "--schedule", "linear"], ["unknown schedule 'linear'"]),
    "train-model": (["train", *TINY, "--model", "bogus"], ["unknown model 'bogus'"]),
    "train-norm": (["train", *TINY, "--norm", "gn3"], ["3 groups do not divide"]),
    "train-data": (["train", *TINY[:2], "--data", "cifar10:none"], ["cifar10", "none"]),
    "train-device-meta": (["train", *TINY, "--device", "meta"], ["device 'meta' cannot train"]),
    "train-device-bogus": (["train", *TINY, "--device", "gpu0"], ["unknown device 'gpu0'"]),
    "train-device-cuda": (["train", *TINY, "--device", "cuda:0"], ["cuda"]),
    "train-norm-batch": (["train", *TINY, "--norm-batch-size", "3"], ["norm_batch_size 3 does not divide"]),
    "train-warmup": (["train", *TINY, "--warmup", "2"], ["warmup (2.0 epochs) must be shorter"]),
    "train-big-batch": (["train", *TINY, "--batch-size", "64"], ["fewer than batch_size 64"]),
    "train-config-missing": (["train", "--config", "none.yaml"], ["cannot read the config file none.yaml"]),
    "train-config-list": (["train", "--config", "LIST"], ["must hold a mapping of config keys"]),
    "train-resume-garbage": (["train", *TINY, "--out", "RUN", "--resume"], ["last.pt is not a readable"]),
    "train-out-file": (["train", *TINY, "--out", "FILE"], ["--out FILE exists and is not a folder"]),
    # sweep, table, reproduce, plot
    "sweep-nothing": (["sweep"], ["give a grid file or --preset NAME"]),
    "sweep-missing": (["sweep", "none.yaml"], ["cannot read the config file none.yaml"]),
    "sweep-list": (["sweep", "LIST"], ["must hold a mapping of config keys"]),
    "sweep-preset": (["sweep", "--preset", "table2"], ["unknown preset 'table2'"]),
    "sweep-both": (["sweep", "LIST", "--preset", "pn-imagenet-resnet50"], ["one of them"]),
    "sweep-parallel": (["sweep", "x.yaml", "--max-parallel", "0"], ["--max-parallel: must be a positive integer"]),
    "sweep-executor": (["sweep", "x.yaml", "--executor", "k8s"], ["--executor: invalid choice: 'k8s'"]),
    "sweep-slurm": (["sweep", "--preset", "pn-imagenet-resnet50", "--data", "gaussian", "--slurm", "x"], ["--slurm takes KEY=VALUE, got 'x'"]),
    "table-missing": (["table", "none"], ["none is not a folder of runs"]),
    "table-empty": (["table", "EMPTY"], ["holds no run (no summary.json below it)"]),
    "table-file": (["table", "FILE"], ["FILE is not a folder of runs"]),
    "table-metric": (["table", "EMPTY", "--metric", "acc"], ["--metric: invalid choice: 'acc'"]),
    "table-where": (["table", "EMPTY", "--where", "norm"], ["--where takes KEY=VALUE, got 'norm'"]),
    "reproduce-nothing": (["reproduce"], ["give the reproduction to run", "pn-table2", "--list"]),
    "reproduce-name": (["reproduce", "pn-tabel2"], ["unknown reproduction 'pn-tabel2'", "Did you mean 'pn-table2'?"]),
    "reproduce-no-data": (["reproduce", "pn-table2"], ["needs --data"]),
    "reproduce-parallel": (["reproduce", "pn-table2", "--max-parallel", "-1"], ["--max-parallel"]),
    "plot-nothing": (["plot"], ["required: runs"]),
    "plot-missing": (["plot", "none"], ["none holds no training run"]),
    "plot-empty": (["plot", "EMPTY"], ["EMPTY holds no training run"]),
}  # fmt: skip


def make_files(folder: Path) -> None:
    (folder / "FILE").write_text("not a folder")
    (folder / "GARBAGE").write_bytes(b"\x00garbage, not a checkpoint" * 10)
    (folder / "LIST").write_text("- 1\n- 2\n")
    (folder / "EMPTY").mkdir()
    (folder / "RUN").mkdir()
    (folder / "RUN" / "last.pt").write_bytes(b"\x00garbage" * 10)


def in_process(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, argv: list[str], fragments: list[str]) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    command = next((a for a in argv if not a.startswith("-")), None)
    prefix = "normlab: error:" if command is None or command == "frobnicate" else None
    assert lines[0].startswith(prefix or f"normlab {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("case", list(CASES))
def test_every_mistake_is_one_line_and_exit_2(case, in_tmp, capsys):
    if case == "train-device-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    argv, fragments = CASES[case]
    make_files(in_tmp)
    code, err = in_process(argv, capsys)
    assert_one_line(code, err, argv, fragments)
    left = sorted(p.name for p in in_tmp.iterdir())
    assert left == ["EMPTY", "FILE", "GARBAGE", "LIST", "RUN"], left  # nothing half-written
    assert (in_tmp / "RUN" / "last.pt").read_bytes() == b"\x00garbage" * 10


def test_a_cpu_allocation_failure_is_out_of_memory_exit_2(monkeypatch, capsys):
    """torch's CPU allocator raises a RuntimeError, not MemoryError: reported as a mistake (too
    large a size), not as a bug in normlab."""

    def allocate(args, console):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 1728000000000 bytes."
        )

    monkeypatch.setattr("normlab.cli.cmd_moments", allocate)
    code, err = in_process(["moments"], capsys)
    assert_one_line(code, err, ["moments"], ["out of memory", "use smaller sizes"])


def test_a_real_bug_is_still_exit_1(monkeypatch, capsys):
    monkeypatch.setattr("normlab.cli.cmd_moments", lambda args, console: [][1])
    code, err = in_process(["moments"], capsys)
    assert code == 1
    assert "internal error, a bug in normlab" in err
    assert "IndexError" in err


def test_valid_edges_run(in_tmp, capsys):
    assert main(["models", "resnet20", "--norm", "gn8+pn"]) == 0
    assert main(["reproduce", "--list"]) == 0
    assert "pn-table2" in capsys.readouterr().out
