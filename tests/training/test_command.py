"""``normlab train`` on the command line: config files, overrides, and every bad input an error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from normlab.cli import main
from normlab.training.checkpoint import load_checkpoint

TINY = [
    "--model", "resnet20", "--width", "0.5", "--data", "gaussian:3x8x8", "--limit", "32",
    "--test-limit", "16", "--batch-size", "16", "--epochs", "1", "--no-progress",
]  # fmt: skip


def run(tmp_path: Path, *args: str, out: str = "run") -> int:
    return main(["train", *TINY, "--out", str(tmp_path / out), *args])


def test_config_file_with_overrides_is_resolved_and_saved(tmp_path):
    config = tmp_path / "grid.yaml"
    config.write_text("norm: gn8+pn\nepochs: 3\nbatch_size: 8\nweight_decay: 5.0e-5\n")
    assert main(["train", "--config", str(config), *TINY, "--out", str(tmp_path / "run")]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["norm"] == "gn8+pn"  # from the file
    assert saved["epochs"] == 1  # the flag wins over the file
    assert saved["batch_size"] == 16
    assert saved["weight_decay"] == 5.0e-5
    assert saved["lr"] == pytest.approx(0.1 * 16 / 256)


def test_resume_reads_the_run_folder_config(tmp_path):
    assert run(tmp_path, "--norm", "ln+pn") == 0
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "2"]) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet21"], "unknown model 'resnet21'"),
        (["--norm", "gn8+pm"], "pm"),
        (["--data", "cifar11:/nowhere"], "cifar11"),
        (["--optimizer", "adam"], "Did you mean 'adamw'"),
        (
            ["--norm-batch-size", "5"],
            "norm_batch_size 5 does not divide the per-device batch size 16",
        ),
        (["--norm", "gn8", "--norm-batch-size", "4"], "has no BatchNorm"),
        (["--batch-size", "1", "--norm", "bn"], "normalization batch of 1"),
        (["--warmup", "2"], "warmup"),
    ],
)
def test_bad_settings_exit_2_with_the_reason(tmp_path, capsys, args, message):
    assert run(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split())
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "-1"], "argument --lr: must be a finite number in (0, inf), got '-1'"),
        (["--epochs", "0"], "argument --epochs: must be a positive integer (1, 2, ...), got '0'"),
        (["--ema", "nan"], "argument --ema: must be a finite number in (0, 1), got 'nan'"),
        (["--workers", "-2"], "argument --workers: must be a non-negative integer"),
    ],
)
def test_numeric_flags_out_of_range_name_the_flag_and_the_range(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        run(tmp_path, *args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resume_with_another_configuration_names_the_keys(tmp_path, capsys):
    assert run(tmp_path) == 0
    assert run(tmp_path, "--resume", "--norm", "gn8+pn", "--seed", "3") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "norm: 'bn' -> 'gn8+pn'" in err
    assert "seed: 0 -> 3" in err


def test_checkpoint_of_another_model_or_corrupt_is_refused(tmp_path, capsys):
    assert run(tmp_path) == 0
    last = tmp_path / "run" / "last.pt"
    state = load_checkpoint(last)
    state["model"] = {"not.a.key": torch.zeros(1)}
    torch.save(state, last)
    assert run(tmp_path, "--resume", "--epochs", "2") == 2
    assert "another model's weights" in capsys.readouterr().err
    last.write_bytes(b"not a checkpoint")
    assert run(tmp_path, "--resume", "--epochs", "2") == 2
    assert "not a readable normlab checkpoint" in capsys.readouterr().err


def test_out_that_is_a_file_or_unwritable_fails_before_any_work(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert run(tmp_path, out="file") == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert run(tmp_path, out="file/run") == 2  # a folder cannot be made under a file
    assert "cannot write to --out" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        assert run(tmp_path, out="locked/run") == 2
        assert "cannot write to --out" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_the_console_script_prints_one_line_and_no_traceback(tmp_path):
    script = Path(sys.executable).with_name("normlab")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "normlab"]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    result = subprocess.run(
        [*command, "train", "--model", "resnet21", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Did you mean" in result.stderr


def test_a_diverged_run_exits_1_and_records_it(tmp_path, capsys):
    assert run(tmp_path, "--lr", "1e30", "--epochs", "2") == 1
    assert "diverged" in capsys.readouterr().err
    assert '"status": "diverged"' in (tmp_path / "run" / "summary.json").read_text()
